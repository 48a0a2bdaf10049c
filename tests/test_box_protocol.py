"""The sans-I/O rules of the gateway side of a box (SERIAL.md "Rules"): bytes and
time in, actions out. No port, no loop, no disk."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.inputs.box_protocol import (
    Action,
    BoxProtocol,
    ForgetDedupe,
    FrameReceived,
    RaiseAlarm,
    RateLimiter,
    Rejected,
    Send,
)
from gateway.inputs.codec import Frame, encode
from tests.serial_helpers import FakeSink


def box(body: str) -> bytes:
    seq, type_, *pairs = body.split(",")
    return encode(Frame(int(seq), type_, tuple(tuple(p.split("=", 1)) for p in pairs)))  # type: ignore[misc]


def sends(actions: list[Action]) -> list[str]:
    return [a.frame.body for a in actions if isinstance(a, Send)]


class Driver:
    """Carries out actions like BoxLink does, against a FakeSink; records what goes out."""

    def __init__(self, name: str = "gate") -> None:
        self.proto = BoxProtocol(name)
        self.sink = FakeSink()
        self.out: list[str] = []

    def led(self, mode: str) -> None:  # the Feedback the sink drives
        self.out.append(self.proto.led(mode).frame.body)  # type: ignore[arg-type]

    def feed(self, data: bytes, now: float = 0.0) -> None:
        for action in self.proto.receive_data(data, now):
            if isinstance(action, Send):
                self.out.append(action.frame.body)
            elif isinstance(action, RaiseAlarm):
                self.sink.raise_alarm(
                    input_ref=action.input_ref,
                    feedback=self,
                    dedupe_key=action.dedupe_key,
                    dedupe_window_s=action.dedupe_window_s,
                )
                self.out.append(self.proto.alarm_durable(action.seq).frame.body)
            elif isinstance(action, ForgetDedupe):
                self.sink.forget_dedupe(action.prefix)


def test_every_non_press_frame_is_acked_at_once() -> None:
    proto = BoxProtocol("gate")
    for i, body in enumerate(["1,HB", "3,RELEASE,btn=1,ms=1840", "4,TAMPER,state=open"]):
        actions = proto.receive_data(box(body), now=10.0 + i)
        assert isinstance(actions[0], FrameReceived)
        assert sends(actions) == [f"{i},ACK,ref={body.split(',')[0]}"]
    assert proto.frames_ok == 3
    assert proto.last_valid_frame_at == 12.0


def test_gateway_frames_match_the_vectors() -> None:
    proto = BoxProtocol("gate")
    assert encode(proto.ack(2).frame) == b"0,ACK,ref=2*27CD\r\n"
    assert encode(proto.led("blink").frame) == b"1,LED,mode=blink*19CC\r\n"
    assert encode(proto.buzz(300).frame) == b"2,BUZZ,ms=300*FC39\r\n"
    assert encode(proto.ping().frame) == b"3,PING*8C04\r\n"


def test_press_is_acked_only_after_durable() -> None:
    proto = BoxProtocol("gate")
    actions = proto.receive_data(box("2,PRESS,btn=1"), now=0.0)
    assert sends(actions) == []  # no ACK before the alarm is on disk
    raise_alarm = [a for a in actions if isinstance(a, RaiseAlarm)]
    assert raise_alarm == [RaiseAlarm(2, "serial:gate", "serial:gate:2", 30.0)]
    assert proto.alarm_durable(2).frame.body == "0,ACK,ref=2"


def test_resent_press_gives_the_same_dedupe_key_and_one_alarm() -> None:
    driver = Driver()
    for _ in range(10):
        driver.feed(box("2,PRESS,btn=1"))
    assert len(driver.sink.calls) == 10
    assert {c.dedupe_key for c in driver.sink.calls} == {"serial:gate:2"}
    assert len(driver.sink.new_alarms) == 1
    # Every copy is ACKed again (the box may have missed the first ACK).
    assert [b for b in driver.out if "ACK" in b] == [f"{i},ACK,ref=2" for i in range(1, 20, 2)]
    # Feedback: blink written before each ACK, via the Feedback the sink was handed.
    assert driver.out[:2] == ["0,LED,mode=blink", "1,ACK,ref=2"]


def test_hello_clears_dedupe_and_records_identity() -> None:
    driver = Driver()
    driver.feed(box("1,PRESS,btn=1"))
    driver.feed(box("0,HELLO,fw=1.4.2,id=box-gate-main"))
    assert driver.proto.box_id == "box-gate-main"
    assert driver.proto.box_fw == "1.4.2"
    assert driver.sink.forgotten == ["serial:gate:"]
    assert driver.out[-1].endswith(",ACK,ref=0")
    driver.feed(box("1,PRESS,btn=1"))  # same SEQ after the reboot: a new press
    assert len(driver.sink.new_alarms) == 2


def test_hello_forgets_before_it_acks() -> None:
    actions = BoxProtocol("gate").receive_data(box("0,HELLO,fw=1,id=b"), now=0.0)
    kinds = [type(a) for a in actions]
    assert kinds == [FrameReceived, ForgetDedupe, Send]


def test_led_frames_and_own_seq_wraps() -> None:
    proto = BoxProtocol("gate")
    assert encode(proto.led("blink").frame).startswith(b"0,LED,mode=blink*")
    assert proto.led("solid").frame.body == "1,LED,mode=solid"
    assert proto.led("fast").frame.body == "2,LED,mode=fast"
    assert proto.ping().frame.body == "3,PING"
    assert proto.buzz(300).frame.body == "4,BUZZ,ms=300"
    proto._tx_seq = 65535
    assert proto.ack(1).frame.seq == 65535
    assert proto.ack(1).frame.seq == 0


def test_bad_lines_are_counted_rate_limited_and_raise_nothing() -> None:
    proto = BoxProtocol("gate")
    bad = b"2,PRESS,btn=1*0000\r\n"
    first = proto.receive_data(bad, now=100.0)
    assert first == [Rejected(first[0].error, True, 0)]  # type: ignore[union-attr]
    quiet = [proto.receive_data(bad, now=101.0 + i)[0] for i in range(3)]
    assert [a.log for a in quiet] == [False, False, False]  # type: ignore[union-attr]
    other = proto.receive_data(b"no crc here\n", now=102.0)[0]
    assert isinstance(other, Rejected)
    assert other.log  # a different reason has its own budget
    later = proto.receive_data(bad, now=105.5)[0]
    assert isinstance(later, Rejected)
    assert (later.log, later.suppressed) == (True, 3)
    assert proto.frame_errors == {"bad-crc": 5, "no-crc": 1}
    assert proto.frames_ok == 0
    assert proto.last_valid_frame_at is None


def test_gateway_frames_from_the_box_are_rejected() -> None:
    (action,) = BoxProtocol("gate").receive_data(box("0,ACK,ref=2"), now=0.0)
    assert isinstance(action, Rejected)
    assert action.error.reason == "unknown-type"


def test_byte_by_byte_gives_the_same_actions() -> None:
    stream = box("0,HELLO,fw=1,id=b") + b"junk\r\n" + box("1,PRESS,btn=1") + box("2,HB")
    whole = BoxProtocol("gate").receive_data(stream, now=0.0)
    proto = BoxProtocol("gate")
    split: list[Action] = []
    for i in range(len(stream)):
        split += proto.receive_data(stream[i : i + 1], now=0.0)
    assert [repr(a) for a in split] == [repr(a) for a in whole]


def test_silent_for() -> None:
    proto = BoxProtocol("gate")
    assert proto.silent_for(5.0) is None
    proto.receive_data(box("1,HB"), now=5.0)
    assert proto.silent_for(11.5) == 6.5


def test_rate_limiter() -> None:
    limiter = RateLimiter(5.0)
    assert limiter.check("a", 0.0) == (True, 0)
    assert limiter.check("a", 1.0) == (False, 0)
    assert limiter.check("b", 1.0) == (True, 0)
    assert limiter.check("a", 4.9) == (False, 0)
    assert limiter.check("a", 5.0) == (True, 2)
    assert limiter.check("a", 10.0) == (True, 0)


@settings(deadline=None)  # shared machine: no per-example deadline
@given(st.binary(max_size=600))
def test_random_bytes_never_raise_an_alarm(data: bytes) -> None:
    actions = BoxProtocol("gate").receive_data(data, now=0.0)
    assert not any(isinstance(a, RaiseAlarm) for a in actions)
