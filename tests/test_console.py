"""What a run prints: the pipeline's progress lines (component i of N, elapsed) in place of TFX's log records, and
training progress per epoch (a tqdm bar on a terminal, one plain line elsewhere)."""
import io
import logging

import numpy as np
import tensorflow as tf
import tf_keras as keras

from pipelines import console
from trainers import progress


def test_component_records_become_numbered_progress_lines_and_are_swallowed(monkeypatch):
    out = io.StringIO()
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    absl_logger = logging.getLogger("absl")
    monkeypatch.setattr(absl_logger, "filters", [])  # as with -v (the quiet filter, if a test set it, is off)
    handler, level = Keep(), absl_logger.level
    absl_logger.addHandler(handler)
    absl_logger.setLevel(logging.INFO)
    try:
        with console.ComponentProgress(3, stream=out):
            for name in ("ImageExampleGen", "Trainer"):
                absl_logger.info("Component %s is running.", name)
                absl_logger.info("Component %s is finished.", name)
            absl_logger.info("something else %d", 7)
        absl_logger.info("Component %s is running.", "Pusher")  # the filter is gone after the run
    finally:
        absl_logger.removeHandler(handler)
        absl_logger.setLevel(level)
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["latentforge: [1/3] ImageExampleGen",
                                                       "latentforge: [2/3] Trainer"]
    assert all(line.endswith(" s)") for line in lines)
    assert seen == ["something else 7", "Component Pusher is running."]


def _fit(stream, live: bool, epochs: int = 2):
    inputs = np.random.default_rng(0).random((64, 4)).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((inputs, inputs)).batch(16)
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(4)])
    model.compile("adam", "mse")
    sink = progress.TerminalProgress(stream=stream, live=live)
    model.fit(data, validation_data=data, epochs=epochs, verbose=0,
              callbacks=[progress.EpochProgress(batch_size=16, sink=sink)])


def test_off_a_terminal_each_epoch_is_one_plain_line():
    out = io.StringIO()
    _fit(out, live=False)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    for epoch, line in enumerate(lines, 1):
        assert line.startswith(f"  epoch {epoch}/2: 4 steps in ") and "img/s" in line
        assert "loss " in line and "val_loss " in line and "\r" not in line


def test_short_epochs_keep_a_line_at_most_every_few_seconds_and_always_the_last(monkeypatch):
    monkeypatch.setattr(progress, "LINE_EVERY_S", 60.0)
    out = io.StringIO()
    _fit(out, live=False, epochs=6)
    assert [line.split(":")[0] for line in out.getvalue().splitlines()] == ["  epoch 1/6", "  epoch 6/6"]
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    out = io.StringIO()
    _fit(out, live=False, epochs=6)
    assert len(out.getvalue().splitlines()) == 6


def test_on_a_terminal_short_epochs_bars_are_cleared_but_the_last_stays(monkeypatch):
    monkeypatch.setattr(progress, "LINE_EVERY_S", 60.0)
    out = io.StringIO()
    _fit(out, live=True, epochs=4)
    # What a terminal ends up showing: each \r redraws the line; a cleared bar leaves an empty one.
    shown = [line.split("\r")[-1] for line in out.getvalue().split("\n")]
    kept = [line.split(":")[0].strip() for line in shown if line.strip()]
    assert kept == ["epoch 1/4", "epoch 4/4"]


def test_on_a_terminal_each_epoch_is_a_bar_that_ends_full():
    out = io.StringIO()
    _fit(out, live=True)
    text = out.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text
    assert text.count("4/4") >= 2 and "img/s" in text and "val_loss" in text


def test_silent_sink_prints_nothing(capsys):
    inputs = np.zeros((8, 2), np.float32)
    model = keras.Sequential([keras.layers.Input((2,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    model.fit(inputs, inputs, epochs=1, verbose=0, callbacks=[progress.EpochProgress(8, progress.SILENT)])
    assert capsys.readouterr().out == ""
