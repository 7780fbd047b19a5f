"""Admission and the peer directory, without sockets (nexus_node.cluster.peers)."""

from __future__ import annotations

import pytest

from nexus_node.cluster.peers import (
    Advert,
    PeerDirectory,
    advertise_host,
    parse_seeds,
    read_advert,
    refusal,
    txt_record,
)

ME = dict(node_id="node-me", cluster="lab", protocol_version=1)


def props(**kv: str) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in kv.items()}


def test_a_registered_txt_record_reads_back_as_the_same_advert():
    txt = txt_record("node-a", "lab", 1, 7070)
    advert = read_advert({k.encode(): v.encode() for k, v in txt.items()}, ["10.0.0.5"], 7070)
    assert advert == Advert("node-a", "lab", 1, "10.0.0.5:7070")
    assert all(len(k) <= 9 for k in txt)   # RFC 6763 §6.4


def test_ipv4_is_preferred_and_ipv6_is_bracketed():
    p = props(node="a", cluster="lab", proto="1")
    assert read_advert(p, ["fd00::5", "10.0.0.5"], 1).address == "10.0.0.5:1"
    assert read_advert(p, ["fd00::5"], 7070).address == "[fd00::5]:7070"


def test_txt_keys_are_case_insensitive():
    assert read_advert(props(NODE="a", Cluster="lab", PROTO="1"), ["10.0.0.5"], 7070).node_id == "a"


@pytest.mark.parametrize("properties, addresses, port, fragment", [
    (props(cluster="lab", proto="1"), ["10.0.0.5"], 7070, "'node'"),
    ({b"node": b"a", b"cluster": None, b"proto": b"1"}, ["10.0.0.5"], 7070, "'cluster'"),
    (props(node="a", cluster="lab", proto="one"), ["10.0.0.5"], 7070, "not a number"),
    (props(node="a", cluster="lab", proto="1", port="7071"), ["10.0.0.5"], 7070, "disagrees"),
    (props(node="a", cluster="lab", proto="1"), [], 7070, "no address"),
    (props(node="a", cluster="lab", proto="1"), ["10.0.0.5"], None, "no SRV port"),
])
def test_unreadable_adverts_say_why(properties, addresses, port, fragment):
    with pytest.raises(ValueError, match=fragment):
        read_advert(properties, addresses, port)


@pytest.mark.parametrize("advert, reason", [
    (Advert("node-b", "lab", 1, "10.0.0.6:7070"), None),
    (Advert("node-me", "lab", 1, "10.0.0.5:7070"), "this node itself"),
    (Advert("node-b", "other", 1, "10.0.0.6:7070"), "cluster 'other', not 'lab'"),
    (Advert("node-b", "Lab", 1, "10.0.0.6:7070"), "cluster 'Lab', not 'lab'"),
    (Advert("node-b", "lab", 2, "10.0.0.6:7070"), "peer protocol 2, not 1"),
])
def test_admission(advert, reason):
    assert refusal(advert, **ME) == reason


def test_seeds_parse_and_normalise():
    assert parse_seeds("") == []
    assert parse_seeds("a:1, 10.0.0.1:7070,,[::1]:7071,a:1") == ["a:1", "10.0.0.1:7070", "[::1]:7071"]


@pytest.mark.parametrize("text", ["a", "a:", ":7070", "a:0", "a:70000", "a:x", "::1:7070"])
def test_bad_seeds_are_refused(text):
    with pytest.raises(ValueError):
        parse_seeds(text)


@pytest.mark.parametrize("bind, explicit, primary, expected", [
    ("127.0.0.1", None, "192.168.1.5", None),             # dev node: never announced to the LAN
    ("::1", None, "192.168.1.5", None),
    ("localhost", None, "192.168.1.5", None),
    ("127.0.0.1", "127.0.0.1", "192.168.1.5", "127.0.0.1"),
    ("0.0.0.0", None, "192.168.1.5", "192.168.1.5"),
    ("0.0.0.0", None, None, None),
    ("0.0.0.0", "10.0.0.9", "192.168.1.5", "10.0.0.9"),
    ("10.0.0.7", None, "192.168.1.5", "10.0.0.7"),
    ("nexus.lan", None, "192.168.1.5", None),             # mDNS A records need an address
])
def test_advertised_address(bind, explicit, primary, expected):
    host, why = advertise_host(bind, explicit, primary)
    assert host == expected
    assert bool(why) == (expected is None)


def test_directory_keys_peers_by_node_id_and_follows_a_new_address():
    d = PeerDirectory()
    assert d.found("b", "10.0.0.6:7070", "mdns", now=1.0)
    assert not d.found("b", "10.0.0.6:7070", "mdns", now=2.0)   # only last_seen moved
    assert d.get("b").last_seen == 2.0
    assert d.found("b", "10.0.0.6:7071", "mdns", now=3.0)       # restarted on another port
    assert [(p.node_id, p.address) for p in d.peers()] == [("b", "10.0.0.6:7071")]


def test_a_seed_is_an_address_until_a_node_is_identified_there():
    d = PeerDirectory()
    assert d.add_seeds(["10.0.0.6:7070", "10.0.0.7:7070"], now=1.0)
    assert not d.add_seeds(["10.0.0.6:7070"], now=2.0)
    assert [(p.node_id, p.source) for p in d.peers()] == [("", "seed"), ("", "seed")]
    assert d.found("b", "10.0.0.6:7070", "mdns", now=3.0)
    assert [(p.node_id, p.address, p.source) for p in d.peers()] == [
        ("b", "10.0.0.6:7070", "seed"), ("", "10.0.0.7:7070", "seed")]
    assert not d.add_seeds(["10.0.0.6:7070"], now=4.0)   # already known as b


def test_mdns_peers_leave_on_goodbye_but_seeds_stay():
    d = PeerDirectory()
    d.add_seeds(["10.0.0.6:7070"], now=1.0)
    d.found("b", "10.0.0.6:7070", "mdns", now=2.0)
    d.found("c", "10.0.0.7:7070", "mdns", now=2.0)
    assert d.lost("c") and not d.lost("c")
    assert not d.lost("b")
    assert [p.node_id for p in d.peers()] == ["b"]


def test_members_told_second_hand_fill_in_but_never_replace_first_hand_knowledge():
    d = PeerDirectory()
    d.add_seeds(["10.0.0.6:7070"], now=1.0)
    d.found("b", "10.0.0.7:7071", "mdns", now=1.0)            # b restarted on a new port
    assert not d.told("b", "10.0.0.7:7070", now=2.0)          # a peer's stale record of b
    assert not d.told("x", "10.0.0.6:7070", now=2.0)          # the seed answers for itself
    assert d.told("c", "10.0.0.8:7070", now=2.0)
    assert not d.told("c", "10.0.0.8:7070", now=3.0)
    assert [(p.node_id, p.address, p.source) for p in d.peers()] == [
        ("b", "10.0.0.7:7071", "mdns"), ("c", "10.0.0.8:7070", "peer"), ("", "10.0.0.6:7070", "seed")]
    assert not d.lost("c")                                    # a member, not an mDNS advert
    d.found("c", "10.0.0.8:7070", "mdns", now=4.0)            # heard first hand later
    assert d.get("c").source == "mdns"
