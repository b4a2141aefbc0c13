"""Sentinel URLs read, masked and handed to kombu; how many replicas confirm a step."""

from __future__ import annotations

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from mutitask_celery import celery_app, connection, sentinel, settings
from mutitask_celery.errors import ConfigurationError
from mutitask_celery.replication import ConfirmingRedis, WritesRefused, as_outage

THREE = "sentinel://:master-secret@h1:26379/2;sentinel://h2:26380;sentinel://h3/2"


def test_a_sentinel_url_names_each_sentinel_and_the_masters_credentials() -> None:
    target = sentinel.parse(THREE)
    assert target.sentinels == (("h1", 26379), ("h2", 26380), ("h3", 26379))
    assert not target.tls
    assert target.master_options["password"] == "master-secret"  # the master's, from the first part that has one
    assert target.master_options["db"] == 2
    tls = sentinel.parse("sentinels://u:p@h1:1;sentinels://h2:2/0?ssl_cert_reqs=none")
    assert tls.tls and tls.master_options["username"] == "u" and tls.master_options["ssl_cert_reqs"] == "none"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sentinel://h1:1;redis://h2:2", "part 2 of the Sentinel URL"),
        ("sentinel://h1:1;sentinels://h2:2", "mixes sentinel:// and sentinels://"),
        ("sentinel://:pw@:1", "names no host"),
        ("redis://h:1", "not a Sentinel URL"),
        ("sentinel://:pw@h1:1;sentinel://h2:2/3", "names database 3 in part 2 but 0 in its first"),
    ],
)
def test_a_wrong_sentinel_url_is_named_without_its_password(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says) as caught:
        sentinel.parse(url)
    assert "pw" not in str(caught.value)


def test_every_part_of_a_sentinel_url_is_masked() -> None:
    masked = settings.mask_url("sentinel://u:s1@h1:1;sentinel://:s2@h2:2;sentinel://h3:3/0?sentinel_password=s3")
    assert masked == "sentinel://u:***@h1:1;sentinel://:***@h2:2;sentinel://h3:3/0?sentinel_password=***"
    assert "s1" not in masked and "s2" not in masked and "s3" not in masked


def test_the_sentinels_password_is_a_setting_never_printed() -> None:
    conf = settings.load_settings(
        environ={"MUTITASK_REDIS_URL": THREE, "MUTITASK_SENTINEL_PASSWORD": "sentinel-secret"}, config=object()
    )
    assert conf.sentinel_password == "sentinel-secret" and conf.sentinel_master == "mymaster"
    assert "sentinel-secret" not in repr(conf)
    with pytest.raises(ConfigurationError, match="MUTITASK_SENTINEL_MASTER"):
        settings.load_settings(environ={"MUTITASK_SENTINEL_MASTER": "my master"}, config=object())


@pytest.mark.parametrize(
    ("url", "given", "replicas"),
    [(THREE, None, 1), ("redis://h:1/0", None, 0), ("redis://h:1/0", "1", 1), (THREE, "0", 0), (THREE, "auto", 1)],
)
def test_replicas_confirm_each_step_behind_sentinel_unless_told(url: str, given: str | None, replicas: int) -> None:
    environ = {"MUTITASK_REDIS_URL": url, **({"MUTITASK_CONFIRM_REPLICAS": given} if given else {})}
    assert settings.load_settings(environ=environ, config=object()).replicas_to_confirm == replicas


def test_a_sentinel_client_follows_the_master_and_its_raw_twin_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUTITASK_REDIS_URL", THREE)
    monkeypatch.setenv("MUTITASK_SENTINEL_MASTER", "books")
    settings.forget()
    try:
        client = connection.redis_client(settings.current().redis_url)  # makes no connection yet
        assert isinstance(client, ConfirmingRedis) and client.count.least == 1
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "books"
        twin = connection.raw_twin(client)
        assert isinstance(twin, ConfirmingRedis) and twin.count is client.count
        assert isinstance(twin.connection_pool, SentinelConnectionPool)
        assert twin.connection_pool.sentinel_manager is pool.sentinel_manager
        assert not twin.connection_pool.connection_kwargs["decode_responses"]
    finally:
        settings.forget()


def test_kombu_is_told_the_masters_name_and_the_sentinels_password() -> None:
    conf = settings.load_settings(
        environ={"MUTITASK_REDIS_URL": THREE, "MUTITASK_SENTINEL_MASTER": "books", "MUTITASK_SENTINEL_PASSWORD": "x"},
        config=object(),
    )
    options = celery_app._with_sentinel({"visibility_timeout": 60}, conf)
    assert options["visibility_timeout"] == 60 and options["master_name"] == "books"
    assert options["sentinel_kwargs"] == {"password": "x"}
    assert options["socket_timeout"] == sentinel.BROKER_SOCKET_TIMEOUT  # a frozen master is found, not waited out
    theirs = celery_app._with_sentinel({"master_name": "celeryconfig-s"}, conf)
    assert theirs["master_name"] == "celeryconfig-s"  # celeryconfig.py's own word stays
    plain = settings.load_settings(environ={"MUTITASK_REDIS_URL": "redis://h:1/0"}, config=object())
    assert celery_app._with_sentinel({}, plain) == {}


@pytest.mark.parametrize(
    ("reply", "outage"),
    [
        ("NOREPLICAS Not enough good replicas to write.", True),
        ("READONLY You can't write against a read only replica.", True),  # a managed Redis's address moved
        ("ERR WAIT cannot be used with replica instances. Please also note ...", True),
        ("UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)", True),
        ("ERR wrong number of arguments for 'hset' command", False),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
    ],
)
def test_a_node_that_cannot_take_writes_now_is_an_outage_not_an_error(reply: str, outage: bool) -> None:
    """A write refused because the node cannot take writes now (too few replicas, or demoted
    while the connection stayed open) is a lost connection: the step is repeated on a new one,
    which reaches the master now. A bad command stays the error it is."""
    error = as_outage(redis.ResponseError(reply))
    assert isinstance(error, WritesRefused) is outage
    assert isinstance(error, redis.ConnectionError) is outage


def test_a_read_only_replica_is_known_by_its_class_too() -> None:
    """redis-py reads ``READONLY ...`` into a ReadOnlyError whose text lacks the word."""
    assert isinstance(as_outage(redis.ReadOnlyError("You can't write against a read only replica.")), WritesRefused)
