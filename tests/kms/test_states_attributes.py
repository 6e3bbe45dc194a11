"""Key states (KMIP 1.4, 3.22 and its state diagram) and the attribute operations.

Transitions: Pre-Active → Active (Activate, or an Activation Date already past);
Active → Deactivated (Revoke) or Compromised (Revoke for key compromise); Destroy from
Pre-Active, Deactivated and Compromised; never from Active. Attributes: standard ones by
the rules of their 3.x tables, custom ``x-`` ones freely with stable indices (2.1.1),
``y-`` and server-set ones refused to clients.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.kms.conftest import (
    MASTER_KEY,
    V1_2,
    V1_4,
    KmipConn,
    attribute_payload,
    create_payload,
    delete_attribute_payload,
    name_attr,
    revoke_payload,
    uid_of,
    uid_payload,
)
from vmcrypt.kmip.attributes import Attribute, attribute
from vmcrypt.kmip.items import find, find_all, integer, structure, text
from vmcrypt.kmip.tags import (
    Operation,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    State,
    Tag,
)
from vmcrypt.kmip.ttlv import Item
from vmcrypt.kms.dispatch import Dispatcher
from vmcrypt.kms.store import Store

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def _state(kmip: KmipConn, uid: str) -> State:
    return State(kmip.get_attributes(uid, "State")["State"][0])


def _indexed(payload: Item, name: str) -> dict[int, object]:
    """index → value of every instance of ``name`` in a response payload."""
    out: dict[int, object] = {}
    for raw in find_all(payload, Tag.ATTRIBUTE):
        attr = Attribute.from_item(raw)
        if attr.name == name:
            out[attr.index or 0] = attr.python
    return out


class _Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


class _LocalConn(KmipConn):
    """A KmipConn that talks to a Dispatcher in process (its clock is the test's)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        super().__init__(sock=None, version=V1_4)  # type: ignore[arg-type]
        self.dispatcher = dispatcher

    def send_bytes(self, data: bytes) -> bytes:
        return self.dispatcher.handle(data)


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[_LocalConn, _Clock]]:
    """A Dispatcher in process whose clock the test sets (starting at ``NOW``)."""
    clock = _Clock()
    store = Store(tmp_path / "kms.db", MASTER_KEY)
    yield _LocalConn(Dispatcher(store, clock=clock)), clock
    store.close()


# --- states ------------------------------------------------------------------------------


def test_activate_moves_pre_active_to_active_once(kmip: KmipConn) -> None:
    uid = kmip.create()
    assert _state(kmip, uid) is State.PRE_ACTIVE
    kmip.activate(uid)
    assert _state(kmip, uid) is State.ACTIVE
    _refused_in_this_state(kmip, Operation.ACTIVATE, uid)
    assert _state(kmip, uid) is State.ACTIVE


def _refused_in_this_state(kmip: KmipConn, operation: Operation, uid: str) -> None:
    """Fails for the object's state. KMIP 1.4 requires the failure, not one reason: this
    server says Illegal Operation (PyKMIP says Permission Denied); either is accepted."""
    item = kmip.fails(operation, uid_payload(uid))
    assert item.reason in (ResultReason.ILLEGAL_OPERATION, ResultReason.PERMISSION_DENIED)


def test_an_activation_date_in_the_past_creates_an_active_key(kmip: KmipConn) -> None:
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    future = past + timedelta(days=30)
    assert _state(kmip, kmip.create(attribute("Activation Date", past))) is State.ACTIVE
    assert _state(kmip, kmip.create(attribute("Activation Date", future))) is State.PRE_ACTIVE


def test_modifying_the_activation_date_to_the_past_activates(kmip: KmipConn) -> None:
    future = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    uid = kmip.create(attribute("Activation Date", future))
    kmip.ok(Operation.MODIFY_ATTRIBUTE, attribute_payload(
        uid, attribute("Activation Date", future - timedelta(days=60))))
    assert _state(kmip, uid) is State.ACTIVE
    # 3.24: once Active, the Activation Date no longer changes.
    kmip.fails(Operation.MODIFY_ATTRIBUTE, attribute_payload(
        uid, attribute("Activation Date", future)), ResultReason.PERMISSION_DENIED)


def test_revoke_deactivates_an_active_key(kmip: KmipConn) -> None:
    uid = kmip.create()
    kmip.activate(uid)
    kmip.revoke(uid, RevocationReasonCode.SUPERSEDED)
    attrs = kmip.get_attributes(uid)
    assert attrs["State"] == [State.DEACTIVATED]
    assert "Deactivation Date" in attrs and "Revocation Reason" in attrs
    assert len(kmip.key_bytes(uid)) == 32  # 3.22: a Deactivated key may still be read
    _refused_in_this_state(kmip, Operation.ACTIVATE, uid)


@pytest.mark.parametrize("code", [RevocationReasonCode.KEY_COMPROMISE,
                                  RevocationReasonCode.CA_COMPROMISE])
@pytest.mark.parametrize("activate", [True, False], ids=["from-active", "from-pre-active"])
def test_revoke_for_compromise_marks_the_key_compromised(
        clocked: tuple[KmipConn, _Clock], activate: bool, code: RevocationReasonCode) -> None:
    """4.20: "If the revocation reason is 'key compromise' or 'CA compromise', then the
    object is placed into the 'compromised' state; the [Compromise] Date is set to the
    current date and time; and the Compromise Occurrence Date is set to the value (if
    provided) in the Revoke request and if a value is not provided … SHOULD be set to the
    Initial Date for the object"."""
    kmip, clock = clocked
    uid = kmip.create()
    if activate:
        kmip.activate(uid)
    clock.now = NOW + timedelta(days=3)
    kmip.revoke(uid, code)
    attrs = kmip.get_attributes(uid)
    assert attrs["State"] == [State.COMPROMISED]
    assert attrs["Compromise Date"] == [NOW + timedelta(days=3)]
    assert attrs["Compromise Occurrence Date"] == [NOW]  # the Initial Date
    assert "Deactivation Date" not in attrs
    # Only "key compromise" can still be recorded for a compromised key.
    kmip.fails(Operation.REVOKE, revoke_payload(uid, RevocationReasonCode.UNSPECIFIED),
               ResultReason.ILLEGAL_OPERATION)


@pytest.mark.parametrize(("steps", "final"), [
    ((), State.DESTROYED),
    (("activate", "revoke"), State.DESTROYED),
    (("activate", "compromise"), State.COMPROMISED),
    (("compromise",), State.COMPROMISED),
], ids=["pre-active", "deactivated", "active-compromised", "pre-active-compromised"])
def test_destroy_from_every_allowed_state(kmip: KmipConn, steps: tuple[str, ...],
                                          final: State) -> None:
    uid = kmip.create()
    for step in steps:
        if step == "activate":
            kmip.activate(uid)
        elif step == "revoke":
            kmip.revoke(uid)
        else:
            kmip.revoke(uid, RevocationReasonCode.KEY_COMPROMISE)
    kmip.destroy(uid)
    expected = State.DESTROYED_COMPROMISED if final is State.COMPROMISED else State.DESTROYED
    attrs = kmip.get_attributes(uid)
    assert attrs["State"] == [expected]
    assert isinstance(attrs["Destroy Date"][0], datetime)
    kmip.fails(Operation.GET, uid_payload(uid), ResultReason.ITEM_NOT_FOUND)
    _refused_in_this_state(kmip, Operation.DESTROY, uid)
    _refused_in_this_state(kmip, Operation.ACTIVATE, uid)
    assert _state(kmip, uid) is expected


def test_an_active_key_is_not_destroyed(kmip: KmipConn) -> None:
    uid = kmip.create()
    kmip.activate(uid)
    kmip.fails(Operation.DESTROY, uid_payload(uid))
    assert _state(kmip, uid) is State.ACTIVE
    assert len(kmip.key_bytes(uid)) == 32
    assert "Destroy Date" not in kmip.get_attributes(uid)


def test_a_destroyed_key_compromised_later_becomes_destroyed_compromised(
        kmip: KmipConn) -> None:
    uid = kmip.create()
    kmip.destroy(uid)
    kmip.revoke(uid, RevocationReasonCode.KEY_COMPROMISE)
    assert _state(kmip, uid) is State.DESTROYED_COMPROMISED


def test_operations_on_an_unknown_uid_are_item_not_found(kmip: KmipConn) -> None:
    for operation in (Operation.GET, Operation.GET_ATTRIBUTES, Operation.ACTIVATE,
                      Operation.DESTROY, Operation.GET_ATTRIBUTE_LIST):
        kmip.fails(operation, uid_payload("nope"), ResultReason.ITEM_NOT_FOUND)


# --- attributes -------------------------------------------------------------------------


def test_multi_instance_custom_attribute_keeps_indices_on_delete(kmip: KmipConn) -> None:
    uid = kmip.create()
    for value in ("zero", "one", "two"):
        kmip.ok(Operation.ADD_ATTRIBUTE, attribute_payload(uid, attribute("x-Tag", value)))
    payload = kmip.ok(Operation.GET_ATTRIBUTES, uid_payload(uid, text(Tag.ATTRIBUTE_NAME,
                                                                      "x-Tag")))
    assert _indexed(payload, "x-Tag") == {0: "zero", 1: "one", 2: "two"}

    deleted = kmip.ok(Operation.DELETE_ATTRIBUTE, delete_attribute_payload(uid, "x-Tag", 1))
    assert _indexed(deleted, "x-Tag") == {1: "one"}
    payload = kmip.ok(Operation.GET_ATTRIBUTES, uid_payload(uid, text(Tag.ATTRIBUTE_NAME,
                                                                      "x-Tag")))
    assert _indexed(payload, "x-Tag") == {0: "zero", 2: "two"}

    kmip.ok(Operation.MODIFY_ATTRIBUTE, attribute_payload(
        uid, attribute("x-Tag", "TWO", index=2)))
    kmip.fails(Operation.MODIFY_ATTRIBUTE, attribute_payload(
        uid, attribute("x-Tag", "ONE", index=1)), ResultReason.ITEM_NOT_FOUND)
    kmip.fails(Operation.DELETE_ATTRIBUTE, delete_attribute_payload(uid, "x-Tag", 1),
               ResultReason.ITEM_NOT_FOUND)
    payload = kmip.ok(Operation.GET_ATTRIBUTES, uid_payload(uid, text(Tag.ATTRIBUTE_NAME,
                                                                      "x-Tag")))
    assert _indexed(payload, "x-Tag") == {0: "zero", 2: "TWO"}


def test_custom_attributes_of_every_type_round_trip(kmip: KmipConn) -> None:
    when = datetime(2025, 5, 6, 7, 8, 9, tzinfo=UTC)
    values = {"x-text": "t", "x-int": -5, "x-bool": True, "x-bytes": b"\x00\xff",
              "x-date": when}
    uid = kmip.create(*(attribute(n, v) for n, v in values.items()))
    attrs = kmip.get_attributes(uid, *values)
    assert attrs == {n: [v] for n, v in values.items()}


def test_standard_attributes_add_modify_delete(kmip: KmipConn) -> None:
    uid = kmip.create(name_attr("first"))
    kmip.ok(Operation.ADD_ATTRIBUTE, attribute_payload(uid, name_attr("second")))
    kmip.ok(Operation.ADD_ATTRIBUTE, attribute_payload(uid, attribute("Contact Information",
                                                                      "ops@example.org")))
    kmip.fails(Operation.ADD_ATTRIBUTE, attribute_payload(
        uid, attribute("Contact Information", "again")), ResultReason.ILLEGAL_OPERATION)
    kmip.ok(Operation.MODIFY_ATTRIBUTE, attribute_payload(
        uid, attribute("Contact Information", "sec@example.org")))
    kmip.ok(Operation.ADD_ATTRIBUTE, attribute_payload(uid, attribute("Object Group", "g")))
    attrs = kmip.get_attributes(uid, "Name", "Contact Information", "Object Group")
    assert attrs == {"Name": ["first", "second"], "Contact Information": ["sec@example.org"],
                     "Object Group": ["g"]}
    assert kmip.locate(name_attr("second")) == [uid]
    kmip.ok(Operation.DELETE_ATTRIBUTE, delete_attribute_payload(uid, "Name", 0))
    kmip.ok(Operation.DELETE_ATTRIBUTE, delete_attribute_payload(uid, "Contact Information"))
    attrs = kmip.get_attributes(uid, "Name", "Contact Information")
    assert attrs == {"Name": ["second"]}
    assert kmip.locate(name_attr("first")) == []


@pytest.mark.parametrize("name", ["State", "Unique Identifier", "Initial Date",
                                  "Object Type", "Destroy Date", "Last Change Date"])
def test_server_set_attributes_are_refused_to_clients(kmip: KmipConn, name: str) -> None:
    uid = kmip.create()
    samples: dict[str, object] = {"State": State.ACTIVE, "Unique Identifier": "mine",
                                  "Object Type": 2}
    value = attribute(name, samples.get(name, datetime(2020, 1, 1, tzinfo=UTC)))
    before = kmip.get_attributes(uid)
    kmip.fails(Operation.ADD_ATTRIBUTE, attribute_payload(uid, value),
               ResultReason.PERMISSION_DENIED)
    kmip.fails(Operation.MODIFY_ATTRIBUTE, attribute_payload(uid, value),
               ResultReason.PERMISSION_DENIED)
    kmip.fails(Operation.DELETE_ATTRIBUTE, delete_attribute_payload(uid, name),
               ResultReason.PERMISSION_DENIED)
    kmip.fails(Operation.CREATE, create_payload(value), ResultReason.PERMISSION_DENIED)
    assert kmip.get_attributes(uid) == before


def test_fixed_attributes_cannot_change_after_creation(kmip: KmipConn) -> None:
    uid = kmip.create()
    kmip.fails(Operation.MODIFY_ATTRIBUTE, attribute_payload(
        uid, attribute("Cryptographic Length", 128)), ResultReason.PERMISSION_DENIED)
    kmip.fails(Operation.DELETE_ATTRIBUTE, delete_attribute_payload(
        uid, "Cryptographic Algorithm"), ResultReason.PERMISSION_DENIED)
    assert kmip.get_attributes(uid, "Cryptographic Length") == {"Cryptographic Length": [256]}


def test_y_attributes_are_for_servers(kmip: KmipConn) -> None:
    uid = kmip.create()
    y = attribute("y-Server", "mine")
    kmip.fails(Operation.ADD_ATTRIBUTE, attribute_payload(uid, y), ResultReason.PERMISSION_DENIED)
    kmip.fails(Operation.CREATE, create_payload(y), ResultReason.PERMISSION_DENIED)
    assert "y-Server" not in kmip.get_attributes(uid)


def test_unknown_standard_attributes_and_wrong_types_are_invalid(kmip: KmipConn) -> None:
    uid = kmip.create()
    bogus = structure(Tag.ATTRIBUTE, text(Tag.ATTRIBUTE_NAME, "Bogus Attribute"),
                      text(Tag.ATTRIBUTE_VALUE, "x"))
    kmip.fails(Operation.ADD_ATTRIBUTE, uid_payload(uid, bogus), ResultReason.INVALID_FIELD)
    wrong = structure(Tag.ATTRIBUTE, text(Tag.ATTRIBUTE_NAME, "Contact Information"),
                      structure(Tag.ATTRIBUTE_VALUE))
    kmip.fails(Operation.ADD_ATTRIBUTE, uid_payload(uid, wrong), ResultReason.INVALID_FIELD)
    # 4.14: "The Attribute Index SHALL NOT be specified in the request".
    kmip.fails(Operation.ADD_ATTRIBUTE, attribute_payload(uid, attribute("x-a", "v", index=3)),
               ResultReason.INVALID_FIELD)
    assert "x-a" not in kmip.get_attributes(uid)


def test_get_attribute_list_names_every_attribute(kmip: KmipConn) -> None:
    uid = kmip.create(name_attr("n"), attribute("x-a", "1"))
    names = [i.value for i in find_all(kmip.ok(Operation.GET_ATTRIBUTE_LIST, uid_payload(uid)),
                                       Tag.ATTRIBUTE_NAME)]
    assert set(names) == set(kmip.get_attributes(uid))
    assert {"Name", "x-a", "State", "Initial Date", "Cryptographic Algorithm"} <= set(names)


# --- Locate -----------------------------------------------------------------------------


def test_locate_by_name_custom_attribute_and_state(kmip: KmipConn) -> None:
    a = kmip.create(name_attr("alpha"), attribute("x-Owner", "vm-1"))
    b = kmip.create(name_attr("beta"), attribute("x-Owner", "vm-1"))
    c = kmip.create(name_attr("gamma"), attribute("x-Owner", "vm-2"))
    kmip.activate(b)
    assert kmip.locate(name_attr("alpha")) == [a]
    assert kmip.locate(attribute("x-Owner", "vm-1")) == [a, b]
    assert kmip.locate(attribute("x-Owner", "vm-1"), attribute("State", State.ACTIVE)) == [b]
    assert kmip.locate(attribute("State", State.PRE_ACTIVE)) == [a, c]
    assert kmip.locate(attribute("x-Owner", "vm-3")) == []
    assert kmip.locate() == [a, b, c]


def test_locate_with_maximum_and_offset_items(kmip: KmipConn) -> None:
    made = [kmip.create(attribute("x-batch", "p")) for _ in range(5)]
    by = attribute("x-batch", "p")
    assert kmip.locate(by, maximum=2) == made[:2]
    assert kmip.locate(by, offset=2) == made[2:]
    assert kmip.locate(by, maximum=2, offset=2) == made[2:4]
    assert kmip.locate(by, offset=9) == []
    assert kmip.locate(by, maximum=0) == []
    payload = kmip.ok(Operation.LOCATE, structure(
        Tag.REQUEST_PAYLOAD, integer(Tag.MAXIMUM_ITEMS, 1), by.to_item()))
    located = find(payload, Tag.LOCATED_ITEMS)
    assert located is not None and located.value == 5  # 1.3+: how many matched in all
    payload = kmip.ok(Operation.LOCATE, structure(Tag.REQUEST_PAYLOAD, by.to_item()),
                      version=V1_2)
    assert find(payload, Tag.LOCATED_ITEMS) is None


def test_locate_by_a_date_range(clocked: tuple[_LocalConn, _Clock]) -> None:
    """4.9: a date attribute given twice selects the objects whose value lies between."""
    kmip, clock = clocked
    made = []
    for day in range(4):
        clock.now = NOW + timedelta(days=day)
        made.append(kmip.create())
    low, high = NOW + timedelta(days=1), NOW + timedelta(days=2)
    assert kmip.locate(attribute("Initial Date", low), attribute("Initial Date", high)) == made[1:3]
    assert kmip.locate(attribute("Initial Date", high), attribute("Initial Date", low)) == made[1:3]
    assert kmip.locate(attribute("Initial Date", low)) == [made[1]]  # once: equality
    assert kmip.locate(attribute("Initial Date", NOW - timedelta(days=9)),
                       attribute("Initial Date", NOW - timedelta(days=8))) == []
    kmip.fails(Operation.LOCATE, structure(Tag.REQUEST_PAYLOAD, *(
        attribute("Initial Date", NOW).to_item() for _ in range(3))), ResultReason.INVALID_FIELD)


def test_changes_move_the_last_change_date(clocked: tuple[_LocalConn, _Clock]) -> None:
    kmip, clock = clocked
    uid = kmip.create()
    assert kmip.get_attributes(uid, "Last Change Date") == {"Last Change Date": [NOW]}
    clock.now = NOW + timedelta(hours=1)
    kmip.ok(Operation.ADD_ATTRIBUTE, attribute_payload(uid, attribute("x-a", "b")))
    attrs = kmip.get_attributes(uid, "Last Change Date", "Initial Date")
    assert attrs == {"Last Change Date": [NOW + timedelta(hours=1)], "Initial Date": [NOW]}


def test_id_placeholder_chains_attribute_operations(kmip: KmipConn) -> None:
    from vmcrypt.kmip.messages import RequestBatchItem

    response = kmip.batch([
        RequestBatchItem(Operation.CREATE, create_payload(), b"1"),
        RequestBatchItem(Operation.ADD_ATTRIBUTE,
                         attribute_payload(None, attribute("x-a", "v")), b"2"),
        RequestBatchItem(Operation.MODIFY_ATTRIBUTE,
                         attribute_payload(None, attribute("x-a", "w")), b"3"),
        RequestBatchItem(Operation.ACTIVATE, uid_payload(), b"4"),
    ])
    assert all(i.status is ResultStatus.SUCCESS for i in response.items)
    assert response.items[0].payload is not None
    uid = uid_of(response.items[0].payload)
    attrs = kmip.get_attributes(uid, "x-a", "State")
    assert attrs == {"x-a": ["w"], "State": [State.ACTIVE]}


def test_operations_without_a_uid_or_placeholder_are_missing_data(kmip: KmipConn) -> None:
    kmip.fails(Operation.GET, uid_payload(), ResultReason.MISSING_DATA)

