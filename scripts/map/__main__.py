"""The MAP's entry point: the packager copies this folder to /opt/holoscan/app and runs ``python3 /opt/holoscan/app``,
with the input, output and model folders in the HOLOSCAN_* environment variables the app reads."""

from pathme.deploy.app import main

main()
