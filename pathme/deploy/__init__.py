"""The MONAI Deploy application: slides in, a JSON report and attention heatmaps per slide out.

``pathme.deploy.pipeline`` holds the steps and needs no SDK; ``pathme.deploy.app`` wires them into MONAI Deploy
operators (``pip install -e '.[deploy]'``).
"""
