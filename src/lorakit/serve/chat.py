"""``lorakit chat``: a conversation in the terminal over the answer path.

Each line typed is a question; the answer streams as it is generated (with output guards or
an index, it is checked whole first, then shown). The conversation is the history of every
later question; when it no longer fits the context window with the answer's token budget,
the oldest turns are dropped and the chat says so. Commands: ``/reset`` forgets the
conversation, ``/save FILE`` writes it as JSON, ``/exit`` (or end of input) leaves.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from lorakit.answer import Answerer, SamplingSpec

__all__ = ["HELP", "run_chat", "save_conversation"]

HELP = "Commands: /reset forget the conversation, /save FILE write it as JSON, /exit leave."


def save_conversation(
    path: str | Path, messages: list[dict[str, str]], meta: dict[str, Any]
) -> Path:
    """Write the conversation as JSON (``{"model": ..., "messages": [...]}``), atomically.

    Raises:
        LorakitError: the file cannot be written.
    """
    from lorakit._fs import write_json_atomic

    target = Path(path).expanduser()
    write_json_atomic(target, {**meta, "messages": messages})
    return target


def run_chat(
    answerer: Answerer,
    stdin: TextIO,
    stdout: TextIO,
    *,
    sampling: SamplingSpec | None = None,
    prompt: str = "> ",
) -> list[dict[str, str]]:
    """Chat until ``/exit`` or the end of ``stdin``; return the conversation.

    Messages from the program start with ``[`` so a script can tell them from answers.
    """
    from lorakit.answer import Answer
    from lorakit.errors import LorakitError

    history: list[dict[str, str]] = []

    def say(text: str) -> None:
        stdout.write(text + "\n")
        stdout.flush()

    say(f"[chat with {answerer.name}; {HELP}]")
    while True:
        stdout.write(prompt)
        stdout.flush()
        line = stdin.readline()
        if not line:
            say("")
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history.clear()
            say("[conversation reset]")
            continue
        if text == "/help":
            say(f"[{HELP}]")
            continue
        if text.startswith("/save"):
            target = text[len("/save") :].strip()
            if not target:
                say("[error: /save needs a file name]")
                continue
            try:
                path = save_conversation(target, history, {"model": answerer.describe()})
            except (LorakitError, OSError) as exc:
                say(f"[error: {exc}]")
                continue
            say(f"[saved {len(history)} messages to {path}]")
            continue
        if text.startswith("/"):
            say(f"[unknown command {text.split()[0]}; {HELP}]")
            continue
        final: Answer | None = None
        try:
            for piece in answerer.stream(text, history, sampling=sampling):
                if isinstance(piece, Answer):
                    final = piece
                else:
                    stdout.write(piece)
                    stdout.flush()
        except LorakitError as exc:
            say(f"\n[error: {exc.format()}]")
            continue
        say("")
        assert final is not None
        if final.dropped_turns:
            del history[: final.dropped_turns]
            say(
                f"[dropped the {final.dropped_turns} oldest messages to fit the "
                f"{answerer.context_window}-token context window]"
            )
        if final.truncated:
            say("[the answer hit the token limit and may be cut off]")
        if final.abstained:
            say(f"[not answered: {final.reason}]")
        history += [
            {"role": "user", "content": text},
            {"role": "assistant", "content": final.text},
        ]
    return history
