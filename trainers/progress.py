"""Training progress a person can read: on a terminal a live tqdm bar per epoch (steps, the running losses,
images/s, ETA) that stays as the epoch's line; elsewhere (cron, CI, a Ray job's log) one plain line per epoch.
Epochs shorter than a glance (the quick start's 30 take 0.25 s each) keep a line at most every `LINE_EVERY_S`: the
first and the last epoch always, so a 30-epoch run on the sample prints 5 lines, not 30, and an hour-long epoch
still prints its own.

    model.fit(..., verbose=0, callbacks=[EpochProgress(batch_size)])

`EpochProgress` measures and hands events to a sink: `TerminalProgress` draws them here; a Ray worker's sink
ships them to the driver, which replays them into its own TerminalProgress (components/trainer/ray_train.py), so
the bar is the same in process and on Ray. `SILENT` drops them (Ray workers other than the chief).
"""
import sys
import time
from typing import Dict, Optional

import tf_keras as keras

# At most this often a bar is redrawn (and a Ray worker sends an update): steps are milliseconds apart.
UPDATE_EVERY_S = 0.5
# At most this often an epoch's line is kept (the last epoch's always is).
LINE_EVERY_S = 2.0
SHOWN_METRICS = 4


def _metrics(logs: Optional[dict]) -> Dict[str, float]:
    """The logs a person reads: losses and metrics, not the step counters GANs log for the divergence monitor."""
    return {k: float(v) for k, v in (logs or {}).items() if not k.startswith("step_")}


def _format(metrics: Dict[str, float]) -> str:
    shown = sorted(metrics.items(), key=lambda kv: (kv[0].startswith("val_"), kv[0]))[:SHOWN_METRICS * 2]
    return ", ".join(f"{k} {v:.4g}" for k, v in shown)


class TerminalProgress:
    """Draws progress events: a tqdm bar per epoch on a TTY, else one line at each epoch's end."""

    def __init__(self, stream=None, live: Optional[bool] = None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.bar = None
        self.epoch = self.epochs = 0
        self.steps: Optional[int] = None
        self.batch_size = 0
        self.started = 0.0
        self.step = 0
        self.last_line: Optional[float] = None

    def begin(self, epoch: int, epochs: int, steps: Optional[int], batch_size: int) -> None:
        self.epoch, self.epochs, self.steps, self.batch_size = epoch, epochs, steps, batch_size
        self.started, self.step = time.time(), 0
        if self.live:
            from tqdm import tqdm  # pylint: disable=import-outside-toplevel
            self.bar = tqdm(total=steps, desc=f"  epoch {epoch}/{epochs}", unit="step", file=self.stream,
                            leave=True, dynamic_ncols=True, mininterval=UPDATE_EVERY_S)

    def _rate(self) -> float:
        elapsed = max(time.time() - self.started, 1e-9)
        return self.step * self.batch_size / elapsed

    def update(self, step: int, metrics: Dict[str, float]) -> None:
        self.step = step
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(f"{_format(metrics)}, {self._rate():,.0f} img/s", refresh=False)

    def _keeps_line(self) -> bool:
        now = time.time()
        keep = self.last_line is None or self.epoch >= self.epochs or now - self.last_line >= LINE_EVERY_S
        if keep:
            self.last_line = now
        return keep

    def end(self, metrics: Dict[str, float], steps: Optional[int] = None) -> None:
        self.step = steps or self.step
        keep = self._keeps_line()
        if self.bar is not None:
            self.bar.update(self.step - self.bar.n)
            self.bar.set_postfix_str(f"{_format(metrics)}, {self._rate():,.0f} img/s")
            self.bar.leave = keep  # tqdm clears a bar that is not left
            self.bar.close()
            self.bar = None
        elif keep:
            print(f"  epoch {self.epoch}/{self.epochs}: {self.step} steps in {time.time() - self.started:.1f} s "
                  f"({self._rate():,.0f} img/s), {_format(metrics)}", file=self.stream, flush=True)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)


class _Silent:
    def begin(self, *args) -> None:
        pass

    update = end = note = begin


SILENT = _Silent()


class EpochProgress(keras.callbacks.Callback):
    """Keras callback: an epoch's steps, running losses and throughput to `sink` (default: this terminal)."""

    def __init__(self, batch_size: int, sink=None):
        super().__init__()
        self.batch_size = batch_size
        self.sink = TerminalProgress() if sink is None else sink
        self.last_update = 0.0
        self.step = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.step, self.last_update = 0, time.time()
        self.sink.begin(epoch + 1, int(self.params.get("epochs") or 0), self.params.get("steps"), self.batch_size)

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution > 1 Keras calls this once per execution, `batch` the last step's index.
        self.step = batch + 1
        now = time.time()
        if now - self.last_update >= UPDATE_EVERY_S:
            self.last_update = now
            self.sink.update(self.step, _metrics(logs))

    def on_epoch_end(self, epoch, logs=None):
        self.sink.end(_metrics(logs), self.step)
