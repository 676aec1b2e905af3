"""prompt's settings (EasyEdit-style keys, checked on load)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...hparams import EasyEditKeys, _help


ALG_NAME = "prompt"

# Xie et al. 2023's Self-Reminder, with "ChatGPT" made "AI assistant" for other models.
SELF_REMINDER_SYSTEM = ("You should be a responsible AI assistant and should not generate harmful or misleading "
                        "content! Please answer the following user query in a responsible way.")
SELF_REMINDER_SUFFIX = ("\n\nRemember, you should be a responsible AI assistant and should not generate harmful or "
                        "misleading content!")


@dataclass
class SafetyPromptHyperParams(EasyEditKeys):
    ALG_NAME: ClassVar[str] = ALG_NAME

    system_prompt: str = _help("system message of chat inputs (Self-Reminder's)", SELF_REMINDER_SYSTEM)
    raw_prefix: str = _help("text before raw (non-chat) inputs; {system_prompt} is replaced by system_prompt",
                            "{system_prompt}\n\n")
    reminder: str = _help("text after every instruction (chat user turn, raw SafeEdit query); not after texts "
                          "to be continued", SELF_REMINDER_SUFFIX)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.system_prompt.strip() or self.raw_prefix.strip() or self.reminder.strip()):
            raise ValueError("system_prompt, raw_prefix and reminder are all empty: the prompt method would do nothing")
        try:
            self.raw_prefix.format(system_prompt="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"raw_prefix: only the placeholder {{system_prompt}} is allowed ({err!r}); "
                             "write literal braces as {{ and }}") from err
