"""EasyEdit plugin: ``import surgery_editor.easyedit`` registers this project's methods in
EasyEdit's ``ALG_DICT`` (the plugin is :mod:`surgery_editor.integration.easyedit`; this module
keeps the import path EasyEdit scripts use)."""

from .integration.easyedit import *  # noqa: F401,F403
from .integration.easyedit import __all__  # noqa: F401
