"""From token ids to the text a client sees: incremental detokenization and stop strings."""

from __future__ import annotations

from typing import Any

from tokenizers.decoders import DecodeStream


class TextStream:
    """Turns a sequence's tokens into text pieces as they arrive, cut at the first stop string.

    tokenizers' DecodeStream holds back bytes of a character split across tokens. Text that
    could still be the beginning of a stop string is held back too (at most the longest stop
    string less one character), so a stop string never reaches a streaming client, as in
    vLLM and OpenAI (the stop string is not part of the output).
    """

    def __init__(self, tokenizer: Any, stop: list[str]) -> None:
        self._backend = tokenizer.backend_tokenizer
        self._decoder = DecodeStream(skip_special_tokens=True)
        self._stop = [text for text in stop if text]
        self._hold = max((len(text) for text in self._stop), default=1) - 1
        self._text = ""
        self._sent = 0
        self.stopped_by: str | None = None
        """The stop string that ended the text, once one did."""

    def push(self, token_ids: list[int]) -> str:
        """Decode new tokens; returns the text that is now safe to send (may be empty)."""
        if self.stopped_by is not None:
            return ""
        for token_id in token_ids:
            piece = self._decoder.step(self._backend, token_id)
            if piece:
                self._text += piece
        if self._stop:
            # A stop string may straddle the text already sent and the new piece.
            start = max(0, self._sent - self._hold)
            found = [(index, text) for text in self._stop if (index := self._text.find(text, start)) >= 0]
            if found:
                index, self.stopped_by = min(found)
                piece, self._sent = self._text[self._sent : index], index
                return piece
        end = max(self._sent, len(self._text) - self._hold)
        piece, self._sent = self._text[self._sent : end], end
        return piece

    def finish(self) -> str:
        """The held-back rest, once the sequence ended without a stop string."""
        if self.stopped_by is not None:
            return ""
        piece, self._sent = self._text[self._sent :], len(self._text)
        return piece
