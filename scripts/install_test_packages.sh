#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages the tests drive as a user would: a single-node SLURM (slurmctld, slurmd,
# slurm-client, munge) for the tests that run a real cluster (tests/slurm_cluster.py; pytest -m slurm), and a
# headless Chromium (chromium-headless-shell) that opens the MIL report.html (tests/test_report.py), libjpeg-turbo's
# TurboJPEG library (libturbojpeg0), which wsidicomizer needs to make DICOM WSI series (tests/test_dicom_wsi.py), and
# dicom3tools, whose dciodvfy checks the Deploy app's DICOM results (tests/test_dicom_results.py). Idempotent: it
# does nothing when every program is already installed, and nothing (exit 0, with a message) when it is not run as
# root or the machine has no apt-get; the tests that need a missing program skip with the reason. It only installs:
# the tests write their own slurm.conf and munge key into a temporary folder and start and stop the daemons
# themselves, so nothing here is configured or started.
#
#   sudo scripts/install_test_packages.sh
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge chromium-headless-shell libturbojpeg0 dicom3tools)
BINARIES=(slurmctld slurmd slurmstepd sbatch srun squeue scontrol scancel sinfo munged munge chromium-headless-shell dciodvfy)

# the daemons live in /usr/sbin, which a non-root PATH may lack
export PATH=$PATH:/usr/sbin:/sbin
missing=()
for binary in "${BINARIES[@]}"; do
    command -v "$binary" >/dev/null 2>&1 || missing+=("$binary")
done
# (a file test, not `ldconfig -p | grep -q`, which fails under pipefail when grep stops early)
compgen -G "/usr/lib/*/libturbojpeg.so.0" >/dev/null || missing+=(libturbojpeg.so.0)
if ((${#missing[@]} == 0)); then
    # (`slurmd -V`, not `sinfo --version`: the clients refuse to print their version without a slurm.conf)
    echo "install_test_packages: SLURM, munge, Chromium, TurboJPEG and dicom3tools are installed ($(slurmd -V 2>&1 || true));" \
        "nothing to do"
    exit 0
fi
if ((EUID != 0)); then
    echo "install_test_packages: missing ${missing[*]}; run as root (sudo $0) to install ${PACKAGES[*]}; nothing done"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_test_packages: missing ${missing[*]}, and no apt-get here: install them with this system's" \
        "package manager (slurmctld, slurmd, the SLURM clients, munge, a headless Chromium); nothing done"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# apt-get update only when the package lists do not know every package (a fresh image has no lists at all)
# (the policy is read into a variable: `apt-cache policy | grep -q` fails under pipefail when grep stops early)
for package in "${PACKAGES[@]}"; do
    policy_text=$(apt-cache policy "$package" 2>/dev/null || true)
    if [[ $policy_text != *"Candidate: "[0-9]* ]]; then
        echo "install_test_packages: apt-get update (the package lists lack $package)"
        apt-get update -qq
        break
    fi
done
echo "install_test_packages: apt-get install ${PACKAGES[*]}"
# policy-rc.d exit 101 keeps the packages' maintainer scripts from starting the daemons with the stock
# /etc/slurm configuration (there is none): the tests start their own
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
fi
# quiet: the maintainer scripts' notices, such as invoke-rc.d's refusals, go to a log printed only on failure
log=$(mktemp)
trap '((created_policy)) && rm -f "$policy"; rm -f "$log"' EXIT
# dpkg --configure -a first: an install cut off earlier leaves packages unpacked but not configured, which
# apt-get install refuses to build on
if ! { dpkg --configure -a && apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "${PACKAGES[@]}"; } \
    >"$log" 2>&1; then
    cat "$log" >&2
    echo "install_test_packages: apt-get install ${PACKAGES[*]} failed (its output above)" >&2
    exit 1
fi
echo "install_test_packages: installed $(slurmd -V 2>&1), $(munged --version 2>&1), $(chromium-headless-shell --version 2>/dev/null)"
