"""A vLLM-shaped scheduler used as a request-instrumentation target (never edited by tests)."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    WAITING = 1
    RUNNING = 2
    FINISHED_STOPPED = 3
    FINISHED_ABORTED = 4


class Request:
    def __init__(self, request_id, prompt_token_ids, max_tokens):
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.max_tokens = max_tokens
        self.status = Status.WAITING

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)


class Scheduler:
    def __init__(self):
        self.waiting: list[Request] = []
        self.running: list[Request] = []

    def add_request(self, request):
        self.waiting.append(request)

    def _start(self, request):
        request.status = Status.RUNNING
        self.running.append(request)

    def _append_output(self, request, token_id):
        request.output_token_ids.append(token_id)

    def _free_request(self, request):
        self.running.remove(request)

    def abort(self, request):
        request.status = Status.FINISHED_ABORTED
        self._free_request(request)

    def step(self):
        """Admit every waiting request, then give each running one token."""
        while self.waiting:
            self._start(self.waiting.pop(0))
        for request in list(self.running):
            self._append_output(request, 7)
            if request.num_output_tokens >= request.max_tokens:
                request.status = Status.FINISHED_STOPPED
                self._free_request(request)
        return len(self.running)


def run(scheduler, requests):
    for request in requests:
        scheduler.add_request(request)
    while scheduler.running or scheduler.waiting:
        scheduler.step()
