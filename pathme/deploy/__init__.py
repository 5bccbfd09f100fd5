"""The MONAI Deploy application: slides or DICOM WSI series in; per slide a JSON report and attention heatmaps out,
and for a DICOM series a DICOM SR and bulk annotations in its study.

``pathme.deploy.app_models`` is the model folder (a MONAI bundle), ``pathme.deploy.pipeline`` holds the steps and
``pathme.deploy.dicom_results`` the DICOM objects, none needing the SDK; ``pathme.deploy.app`` wires the steps into
MONAI Deploy operators (``pip install -e '.[deploy]'``); scripts/stage_map.py stages its MONAI Application Package.
"""
