"""surgery_editor: Model Surgery (Wang et al., arXiv 2407.08770) as an EasyEdit algorithm.

Public API::

    from surgery_editor import ModelSurgeryHyperParams, apply_model_surgery_to_model, load_model

``import surgery_editor.easyedit`` registers ``ModelSurgery`` in EasyEdit's ``ALG_DICT``.
"""

import logging

from .methods.ModelSurgery import (LinearProbe, ModelSurgeryHyperParams, SurgeryPatch, apply_model_surgery_to_model,
                                    build_patch, compute_patch, train_behaviour_probe, train_probe)
from .models import load_model

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ModelSurgeryHyperParams",
    "apply_model_surgery_to_model",
    "load_model",
    "SurgeryPatch",
    "LinearProbe",
    "train_probe",
    "compute_patch",
    "build_patch",
    "train_behaviour_probe",
]
__version__ = "0.1.0"
