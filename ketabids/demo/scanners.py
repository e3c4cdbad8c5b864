"""Scanner profiles of the demo's sites: how each "scanner" images a phantom (contrast, noise,
bias field; arguments of :func:`ketabids.demo.head.simulate_subject`) and what its T1w JSON
sidecar says."""
from __future__ import annotations

#: Scanner profiles: image contrast/noise/bias of the simulation and the T1w sidecar keys.
COMMON_SIDECAR = {
    "InstitutionName": "Synthetic Imaging Centre",
    "InstitutionAddress": "1 Phantom Road, Nowhere",
    "InstitutionalDepartmentName": "Psychiatry",
    "PulseSequenceType": "MPRAGE-like 3D T1-weighted",
    "NonlinearGradientCorrection": True,
    "ReceiveCoilActiveElements": "all",
    "MatrixCoilMode": "none",
    "CoilCombinationMethod": "rSOS",
    "DwellTime": 7.8e-06,
}

SCANNERS = {
    "A": {
        "simulation": {"contrast": {}, "noise": 0.03, "bias_strength": 0.2},
        "sidecar": {
            "Manufacturer": "Siemens",
            "DeviceSerialNumber": "SYN0001",
            "StationName": "PRISMA-A",
            "SoftwareVersions": "syngo MR XA30",
            "ReceiveCoilName": "HeadNeck_64",
            "PulseSequenceDetails": "Standard Siemens MPRAGE",
            "ManufacturersModelName": "Prisma",
            "MagneticFieldStrength": 3,
            "MRAcquisitionType": "3D",
            "ScanningSequence": "GR_IR",
            "SequenceVariant": "SK_SP_MP",
            "SequenceName": "MPRAGE",
            "RepetitionTime": 2.3,
            "EchoTime": 0.00226,
            "InversionTime": 0.9,
            "FlipAngle": 8,
        },
    },
    "B": {
        "simulation": {
            "contrast": {"gm": 0.58, "wm": 0.86, "csf": 0.22, "fat": 0.9},
            "noise": 0.035,
            "bias_strength": 0.25,
        },
        "sidecar": {
            "Manufacturer": "GE",
            "DeviceSerialNumber": "SYN0002",
            "StationName": "MR750-B",
            "SoftwareVersions": "DV26.0_R03",
            "ReceiveCoilName": "32Ch Head",
            "PulseSequenceDetails": "GE BRAVO",
            "ManufacturersModelName": "DISCOVERY MR750",
            "MagneticFieldStrength": 3,
            "MRAcquisitionType": "3D",
            "ScanningSequence": "GR_IR",
            "SequenceVariant": "SP_MP",
            "SequenceName": "BRAVO",
            "RepetitionTime": 8.2,
            "EchoTime": 0.0032,
            "InversionTime": 0.45,
            "FlipAngle": 12,
        },
    },
    "C": {
        "simulation": {
            "contrast": {"gm": 0.55, "wm": 0.88, "csf": 0.15, "fat": 0.85, "muscle": 0.35},
            "noise": 0.045,
            "bias_strength": 0.3,
        },
        "sidecar": {
            "Manufacturer": "Philips",
            "DeviceSerialNumber": "SYN0003",
            "StationName": "ACHIEVA-C",
            "SoftwareVersions": "5.6.1",
            "ReceiveCoilName": "SENSE-Head-8",
            "PulseSequenceDetails": "Philips 3D T1-TFE",
            "ManufacturersModelName": "Achieva",
            "MagneticFieldStrength": 1.5,
            "MRAcquisitionType": "3D",
            "ScanningSequence": "GR",
            "SequenceVariant": "MP",
            "SequenceName": "T1TFE",
            "RepetitionTime": 8.1,
            "EchoTime": 0.0037,
            "InversionTime": 1.0,
            "FlipAngle": 8,
        },
    },
}
