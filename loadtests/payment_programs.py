"""The payment side of a load run (devstack.stack.payment_programs: the webhook receiver,
the simulated provider, the refund sender, the reconciler), each program a child of its own
so a fault schedule can kill one with SIGKILL and start it again while the others run.

devstack.stack.payments_and_receiver starts the same programs with the same settings, but
together, for the life of a block; a run that strikes one of them needs them apart.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import TracebackType

from devstack.stack import payment_programs, start_payment_program
from loadtests.stack import PaymentSide
from runtime.processes import kill_child, stop_child


class PaymentPrograms:
    """The payment side's programs by name ("payments-receiver", "payment-provider",
    "refund-sender", "payments-reconciler"), started on entry, stopped on exit."""

    def __init__(self, side: PaymentSide, logs_dir: Path) -> None:
        programs = payment_programs(
            side.dev, side.receiver, receiver_env=side.client_env, reconciler=side.reconciler
        )
        self._programs = {program[0]: program for program in programs}
        self._logs_dir = logs_dir
        self._running: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> PaymentPrograms:
        try:
            for name in self._programs:
                self.start(name)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def names(self) -> list[str]:
        """Every program's name, in the order they start."""
        return list(self._programs)

    def pid(self, name: str) -> int:
        """The running program's process id."""
        return self._running[name].pid

    def start(self, name: str) -> int:
        """Start `name` (again); its process id."""
        proc = start_payment_program(self._programs[name], self._logs_dir)
        self._running[name] = proc
        return proc.pid

    def kill(self, name: str) -> int:
        """SIGKILL `name` and reap it, as a crash would end it; the process id it had."""
        proc = self._running.pop(name)
        kill_child(proc)
        return proc.pid

    def exited(self) -> dict[str, int]:
        """The programs that ended by themselves (not by `kill`), with their exit codes."""
        return {
            name: code for name, proc in self._running.items() if (code := proc.poll()) is not None
        }

    def close(self) -> None:
        """Stop every program still running, the last started first."""
        for name in reversed(list(self._running)):
            stop_child(self._running.pop(name))
