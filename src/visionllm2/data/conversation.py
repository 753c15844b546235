"""Conversation templates: how turns become one prompt string, and which parts are trained."""

from __future__ import annotations

from dataclasses import dataclass

from visionllm2.data.sample import Turn


@dataclass(frozen=True)
class ConversationTemplate:
    """Renders a conversation as text segments, marking the assistant's words as trainable.

    The end-of-turn string after an answer is trained too, so the model learns to stop.
    """

    name: str
    system: str
    system_format: str  # "{system}" placeholder
    user_format: str  # "{content}" placeholder
    assistant_prefix: str
    assistant_suffix: str  # end of an assistant turn (trained)

    def segments(self, turns: list[Turn], *, add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
        """(text, trainable) pieces in order. With ``add_generation_prompt`` the last turn must
        be the user's and the assistant prefix is appended for the model to continue."""
        if not turns:
            raise ValueError("a conversation needs at least one turn")
        segs: list[tuple[str, bool]] = []
        system = self.system
        if turns[0].role == "system":
            system, turns = turns[0].content, turns[1:]
        if system:
            segs.append((self.system_format.format(system=system), False))
        for i, turn in enumerate(turns):
            expected = "user" if i % 2 == 0 else "assistant"
            if turn.role != expected:
                raise ValueError(
                    f"turn {i} has role {turn.role!r} but turns must alternate user/assistant "
                    "(optionally after one system turn)"
                )
            if turn.role == "user":
                segs.append((self.user_format.format(content=turn.content), False))
            else:
                segs.append((self.assistant_prefix, False))
                segs.append((turn.content + self.assistant_suffix, True))
        if add_generation_prompt:
            if turns[-1].role != "user":
                raise ValueError("add_generation_prompt needs the conversation to end with a user turn")
            segs.append((self.assistant_prefix, False))
        return segs


TEMPLATES: dict[str, ConversationTemplate] = {
    # Vicuna-style roles without a system prompt: short, for tiny byte-level models.
    "plain": ConversationTemplate(
        name="plain",
        system="",
        system_format="{system}\n",
        user_format="USER: {content}\n",
        assistant_prefix="ASSISTANT: ",
        assistant_suffix="</s>\n",
    ),
    # The official model's LLM (Vicuna v1).
    "vicuna_v1": ConversationTemplate(
        name="vicuna_v1",
        system="A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        system_format="{system} ",
        user_format="USER: {content} ",
        assistant_prefix="ASSISTANT: ",
        assistant_suffix="</s>",
    ),
    # ChatML, used by SmolLM2-Instruct and Qwen.
    "chatml": ConversationTemplate(
        name="chatml",
        system="",
        system_format="<|im_start|>system\n{system}<|im_end|>\n",
        user_format="<|im_start|>user\n{content}<|im_end|>\n",
        assistant_prefix="<|im_start|>assistant\n",
        assistant_suffix="<|im_end|>\n",
    ),
}


def get_template(name: str) -> ConversationTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]
