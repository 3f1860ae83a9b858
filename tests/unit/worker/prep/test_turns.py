"""Turns on shared CPU cores: decode processes wait while the model runs, unless stages overlap.

The model's side (``Turns``) and a decode process's side (``Turn``) map the same shared memory;
here both sides are threads of this process, as the gate does not care which process it is in.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from worker.prep.turns import Turn, Turns


@pytest.fixture
def gate() -> Iterator[Turns]:
    turns = Turns(enabled=True, processes=2)
    yield turns
    turns.close()


def start_decoding(turn: Turn, entered: threading.Event,
                   release: threading.Event | None = None) -> threading.Thread:
    def decoder() -> None:
        with turn.decoding():
            entered.set()
            if release is not None:
                release.wait(5)

    thread = threading.Thread(target=decoder)
    thread.start()
    return thread


def test_on_cpu_decoders_wait_while_the_model_runs(gate: Turns):
    entered = threading.Event()
    with gate.model():
        thread = start_decoding(Turn(gate.fd, 0, enabled=True), entered)
        assert not entered.wait(0.3)  # no decode on the model's cores during a forward pass
    assert entered.wait(5)
    thread.join()


def test_on_a_gpu_the_stages_overlap():
    turns = Turns(enabled=False, processes=1)
    entered = threading.Event()
    with turns.model():
        thread = start_decoding(Turn(turns.fd, 0, enabled=False), entered)
        assert entered.wait(5)
    thread.join()
    turns.close()


def test_the_model_waits_for_running_decodes(gate: Turns):
    decoding, release, modelled = threading.Event(), threading.Event(), threading.Event()

    def model() -> None:
        with gate.model():
            modelled.set()

    decoder = start_decoding(Turn(gate.fd, 1, enabled=True), decoding, release)
    assert decoding.wait(5)
    thread = threading.Thread(target=model)
    thread.start()
    assert not modelled.wait(0.3)
    release.set()
    assert modelled.wait(5)
    for each in (decoder, thread):
        each.join()


def test_an_error_in_the_models_turn_does_not_block_decoders(gate: Turns):
    with pytest.raises(RuntimeError), gate.model():
        raise RuntimeError("time limit")
    entered = threading.Event()
    start_decoding(Turn(gate.fd, 0, enabled=True), entered).join(5)
    assert entered.is_set()


def test_a_decoder_that_died_mid_decode_does_not_hold_the_model(gate: Turns):
    gate.memory[1 + 1] = 1  # slot 1 was decoding when its process was killed
    gate.forget(1)
    modelled = threading.Event()

    def model() -> None:
        with gate.model():
            modelled.set()

    thread = threading.Thread(target=model)
    thread.start()
    assert modelled.wait(5)
    thread.join()
