"""Integration with EasyEdit: the plugin that registers this package's methods in EasyEdit's
``ALG_DICT`` (:mod:`.easyedit`, imported as ``surgery_editor.easyedit``) and the import
workarounds it needs (:mod:`.easyedit_compat`)."""
