"""The agent registry: agents and their sessions shared by every dialer node through Redis.

Each node keeps its agents in its own `AgentPool` (the state machine the engine drives). The
registry makes that pool cluster-wide:

- **Ownership by lease.** An agent's session belongs to one node at a time: `owner` and `token` (the
  owning process's session token) in the agent's hash, fenced by an `epoch` that grows with every
  change of owner. The lease is the node's: `{prefix}:node:<id>:alive` holds the process's token
  with a TTL of `lease_s` (Redis server clock), renewed every third of it. One heartbeat covers all
  of a node's agents (renewing each agent separately cost three Redis commands per agent every
  five seconds, most of the cluster's Redis load in bench/scale.py). A node that dies stops
  renewing; after `lease_s` any node may take its sessions over on each agent's next action (a
  login, ready, pause, wrap-up or logout sent to that node's API). A restarted node has a new
  token, so it does not resurrect the sessions of its previous life. Only the owner's pool holds
  the agent, so only the owner offers it calls. A node learns that a session was taken from it
  (after a partition) on its next heartbeat, which checks the owner and epoch of every session the
  node holds (a read: a heartbeat retried after a lost reply gives the same answer).
- **Mirror.** Every state change of an owned agent is written to its hash (state, since, pause
  reason, call), fenced by the epoch so a node that lost the session cannot overwrite the new owner.
- **Routing.** A command for an agent owned by another live node goes to that node's inbox stream
  (`{prefix}:node:<id>:inbox`); the owner applies it to its pool and answers on a reply list that
  the sender waits on. Commands are applied by the owner only, so the state machine is never run
  in two places for one agent.

Keys (prefix `dialer`): `dialer:agent:<id>` hash; `dialer:agents` set of agent ids;
`dialer:node:<node>:alive` the node's lease; `dialer:node:<node>:inbox` stream;
`dialer:agent-reply:<request>` list.

Agents added to a pool directly (the daemon's `--sim-agents`) are node-local and not registered.

The surface the HTTP API uses: `login()`, `command()`, `get()`, `agents()`; errors are
`AgentNotFoundError` (404), `dialer.agents.AgentError` (409: illegal state change),
`AgentCommandError` (400: unknown action or argument) and `OwnerUnavailableError` (503).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final, cast

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from dialer.agents import Agent, AgentError, AgentPool
from dialer.errors import DialerError
from dialer.outcomes import AgentState

log = structlog.get_logger(__name__)

DEFAULT_LEASE_S: Final = 15.0
"""How long a silent node keeps its agents' sessions: the longest an agent waits for a takeover."""

ACTIONS: Final = frozenset({"login", "ready", "pause", "logout", "wrap_up_done"})
"""Commands an agent's session accepts (`command()`; `login()` is `command(..., "login", ...)`)."""

INBOX_MAXLEN: Final = 10_000
"""Inbox streams are trimmed to about this many entries; commands are answered within seconds."""

REPLY_TTL_S: Final = 30
"""A reply nobody picked up (the sender timed out) is deleted after this long."""

_POLL_S: Final = 0.5
"""Blocking reads (inbox, replies) wait at most this long per call: below any socket timeout."""

_NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: agent, agents set, this node's alive key. ARGV: id, node, token, lease ms, create ('1': a login
# may create the record), node key prefix, then for a login: uri, pool, skills, priority.
# Returns {'owned', owner} when another live node holds the session, {'missing'} when there is no
# such agent and none may be created, else {'ok', epoch, previous owner, previous state, taken} where
# taken is '1' when the session changed hands (a takeover or a first login).
_ACQUIRE = _NOW_MS + """
local now = now_ms()
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])  -- acting for an agent is also a heartbeat
local f = redis.call('HMGET', KEYS[1], 'owner', 'token', 'epoch', 'state')
local owner, token, epoch, state = f[1] or '', f[2] or '', tonumber(f[3] or '0'), f[4]
if not state and ARGV[5] ~= '1' then return {'missing'} end
if owner ~= '' and token ~= ARGV[3] then
  local alive = redis.call('GET', ARGV[6] .. owner .. ':alive')
  if alive and alive == token then return {'owned', owner} end
end
local taken = '0'
if owner ~= ARGV[2] or token ~= ARGV[3] then
  epoch = epoch + 1
  taken = '1'
end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'token', ARGV[3], 'epoch', epoch)
if not state then
  redis.call('HSET', KEYS[1], 'state', 'logged_out', 'state_since', now / 1000, 'uri', '', 'pool', 'default',
             'skills', '', 'priority', 0)
  state = 'logged_out'
end
if ARGV[5] == '1' and #ARGV >= 10 then
  redis.call('HSET', KEYS[1], 'uri', ARGV[7], 'pool', ARGV[8], 'skills', ARGV[9], 'priority', ARGV[10])
end
redis.call('SADD', KEYS[2], ARGV[1])
return {'ok', tostring(epoch), owner, state, taken}
"""

# KEYS: this node's alive key. ARGV: token, lease ms, agent key prefix, node, then (id, epoch) of each
# session the node holds. Renews the node's lease; returns the ids of those sessions now held by
# another node or epoch. It writes nothing else, so a retry after a lost reply gives the same answer
# (draining a set of taken sessions would lose them with the reply).
_HEARTBEAT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local out = {}
for i = 5, #ARGV, 2 do
  local f = redis.call('HMGET', ARGV[3] .. ARGV[i], 'owner', 'epoch')
  if f[1] ~= ARGV[4] or f[2] ~= ARGV[i + 1] then
    out[#out + 1] = ARGV[i]
  end
end
return out
"""

# ARGV: node, agent key prefix, then groups of 9: id, epoch, state, state_since, pause_reason, call_id,
# calls_handled, uri, pool. Writes each agent's state if this node still owns it; returns ids refused.
_MIRROR = """
local refused = {}
for i = 3, #ARGV, 9 do
  local key = ARGV[2] .. ARGV[i]
  local f = redis.call('HMGET', key, 'owner', 'epoch')
  if f[1] == ARGV[1] and f[2] == ARGV[i + 1] then
    redis.call('HSET', key, 'state', ARGV[i + 2], 'state_since', ARGV[i + 3], 'pause_reason', ARGV[i + 4],
               'call_id', ARGV[i + 5], 'calls_handled', ARGV[i + 6], 'uri', ARGV[i + 7], 'pool', ARGV[i + 8])
  else
    refused[#refused + 1] = ARGV[i]
  end
end
return refused
"""

# KEYS: agent. ARGV: node, epoch. Gives the session up (shutdown or logout): the record stays,
# ownerless, and the next action on any node takes it.
_RELEASE = """
local f = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'owner', '', 'token', '')
return 1
"""


class AgentRegistryError(DialerError):
    """The agent registry could not carry out a request."""


class AgentNotFoundError(AgentRegistryError):
    """No agent with this id has ever logged in."""


class AgentCommandError(AgentRegistryError):
    """The command is not one an agent's session accepts, or its arguments are wrong."""


class OwnerUnavailableError(AgentRegistryError):
    """The node owning the agent's session did not answer; the session moves when its lease expires."""


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An agent as the registry shows it to every node."""

    agent_id: str
    uri: str
    pool: str
    skills: tuple[str, ...]
    priority: int
    state: AgentState
    state_since: float  # epoch seconds
    pause_reason: str
    call_id: str | None
    calls_handled: int
    owner: str | None  # node holding the session; None when ownerless
    lease_until: float  # epoch seconds (Redis server clock) the owner's lease runs to; 0 when not live
    live: bool  # the owner's lease had not expired when this was read

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON (the inbox replies)."""
        data = asdict(self)
        data["state"] = self.state.value
        data["skills"] = list(self.skills)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgentRecord:
        """Inverse of `as_dict`."""
        return cls(agent_id=str(data["agent_id"]), uri=str(data["uri"]), pool=str(data["pool"]),
                   skills=tuple(data["skills"]), priority=int(data["priority"]),
                   state=AgentState(data["state"]), state_since=float(data["state_since"]),
                   pause_reason=str(data["pause_reason"]), call_id=data["call_id"],
                   calls_handled=int(data["calls_handled"]), owner=data["owner"],
                   lease_until=float(data["lease_until"]), live=bool(data["live"]))


def _record_from_hash(agent_id: str, raw: Mapping[str, str],
                      alive: Mapping[str, tuple[str, float]]) -> AgentRecord:
    """`alive`: each owner node's current token and lease expiry (epoch s)."""
    owner = raw.get("owner") or None
    token, lease_until = alive.get(owner or "", ("", 0.0))
    live = owner is not None and token != "" and token == raw.get("token")
    return AgentRecord(
        agent_id=agent_id, uri=raw.get("uri", ""), pool=raw.get("pool", "default"),
        skills=tuple(s for s in raw.get("skills", "").split(",") if s),
        priority=int(raw.get("priority") or 0), state=AgentState(raw.get("state", "logged_out")),
        state_since=float(raw.get("state_since") or 0.0), pause_reason=raw.get("pause_reason", ""),
        call_id=raw.get("call_id") or None, calls_handled=int(raw.get("calls_handled") or 0),
        owner=owner, lease_until=lease_until if live else 0.0, live=live,
    )


_ERRORS: Final[dict[str, type[DialerError]]] = {
    "AgentError": AgentError, "AgentNotFoundError": AgentNotFoundError,
    "AgentCommandError": AgentCommandError, "OwnerUnavailableError": OwnerUnavailableError,
}


class AgentRegistry:
    """This node's side of the cluster-wide agent registry. Run `await registry.run(stop)` in the daemon.

    `redis` must decode responses (str). `finish_wrap_up(agent_id, disposition)` ends an agent's
    wrap-up on this node (the engine's `finish_wrap_up`, which keeps its after-call accounting).
    """

    def __init__(self, redis: aioredis.Redis, agents: AgentPool, *, node_id: str,
                 lease_s: float = DEFAULT_LEASE_S, command_timeout_s: float = 3.0, prefix: str = "dialer",
                 finish_wrap_up: Callable[[str, str], object] | None = None) -> None:
        if not redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise AgentRegistryError("AgentRegistry needs a client created with decode_responses=True")
        if lease_s <= 0:
            raise AgentRegistryError(f"agent lease_s must be positive, got {lease_s}")
        self.redis = redis
        self.pool = agents
        self.node_id = node_id
        self.lease_s = lease_s
        self.command_timeout_s = command_timeout_s
        self.prefix = prefix
        self.finish_wrap_up = finish_wrap_up
        self._owned: dict[str, str] = {}  # agent id -> epoch of our session
        self._lost: set[str] = set()  # sessions taken over elsewhere while the agent was on a call here
        self._dirty: set[str] = set()
        self._dirty_event = asyncio.Event()
        self.token = f"{node_id}/{secrets.token_hex(6)}"  # this process's life as `node_id`
        self._acquire = redis.register_script(_ACQUIRE)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._mirror = redis.register_script(_MIRROR)
        self._release = redis.register_script(_RELEASE)
        agents.subscribe(self._on_change)

    # Keys ---------------------------------------------------------------------------------------

    def _agent_key(self, agent_id: str) -> str:
        return f"{self.prefix}:agent:{agent_id}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}:agents"

    def _node_key(self, node_id: str, name: str) -> str:
        return f"{self.prefix}:node:{node_id}:{name}"

    def inbox(self, node_id: str) -> str:
        """The command stream of `node_id`."""
        return self._node_key(node_id, "inbox")

    def _reply_key(self, request_id: str) -> str:
        return f"{self.prefix}:agent-reply:{request_id}"

    # The API's surface ------------------------------------------------------------------------------

    async def login(self, agent_id: str, uri: str, pool: str, *, skills: Iterable[str] = (),
                    priority: int = 0, paused: bool = False, reason: str = "") -> AgentRecord:
        """Log an agent in (ready, or paused with `reason`), on the node that owns their session.

        A first login, or one after the owner's lease expired, makes this node the owner. Logging in
        again updates the URI, pool, skills and priority.
        """
        return await self.command(agent_id, "login", uri=uri, pool=pool, skills=sorted(set(skills)),
                                  priority=priority, paused=paused, reason=reason)

    async def command(self, agent_id: str, action: str, **kw: Any) -> AgentRecord:
        """Apply `action` to the agent's session wherever it lives; returns the agent afterwards.

        Actions: `login` (uri, pool, skills, priority, paused, reason), `ready`, `pause` (reason),
        `logout`, `wrap_up_done` (disposition). Owned here or ownerless (lease expired): applied
        here, taking the session over. Owned by another live node: sent to it, and its answer
        returned (or its error raised).
        """
        if action not in ACTIONS:
            raise AgentCommandError(f"unknown agent action {action!r}; expected one of {sorted(ACTIONS)}")
        if action == "login":
            for key in ("uri", "pool"):
                if not isinstance(kw.get(key), str) or not kw[key]:
                    raise AgentCommandError(f"login needs {key!r}")
        owner = await self._take(agent_id, action, kw)
        if owner is None:
            return await self._apply(agent_id, action, kw)
        return await self._send(owner, agent_id, action, kw)

    async def get(self, agent_id: str) -> AgentRecord | None:
        """The agent as last mirrored, or None if it never logged in."""
        raw = cast(dict[str, str], await self.redis.hgetall(self._agent_key(agent_id)))
        if not raw:
            return None
        return _record_from_hash(agent_id, raw, await self._alive({raw.get("owner", "")}))

    async def agents(self, pool: str | None = None) -> list[AgentRecord]:
        """Every registered agent (of `pool`), sorted by id."""
        ids = sorted(cast(set[str], await self.redis.smembers(self._index)))
        out: list[AgentRecord] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            async with self.redis.pipeline(transaction=False) as pipe:
                for agent_id in chunk:
                    pipe.hgetall(self._agent_key(agent_id))
                raws = cast(list[dict[str, str]], await pipe.execute())
            alive = await self._alive({raw.get("owner", "") for raw in raws})
            for agent_id, raw in zip(chunk, raws, strict=True):
                if raw:
                    rec = _record_from_hash(agent_id, raw, alive)
                    if pool is None or rec.pool == pool:
                        out.append(rec)
        return out

    async def _alive(self, nodes: set[str]) -> dict[str, tuple[str, float]]:
        """Each node's current token and lease expiry (epoch s); nodes without a lease are left out."""
        names = sorted(n for n in nodes if n)
        if not names:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            for name in names:
                pipe.get(self._node_key(name, "alive"))
                pipe.pttl(self._node_key(name, "alive"))
            (secs, micros), *replies = await pipe.execute()
        now = int(secs) + int(micros) / 1e6
        out = {}
        for name, token, pttl in zip(names, replies[0::2], replies[1::2], strict=True):
            if token and int(pttl) > 0:
                out[name] = (str(token), now + int(pttl) / 1000.0)
        return out

    def owns(self, agent_id: str) -> bool:
        """True while this node holds the agent's session."""
        return agent_id in self._owned

    @property
    def owned(self) -> frozenset[str]:
        """Agents whose sessions this node holds."""
        return frozenset(self._owned)

    # Ownership ------------------------------------------------------------------------------------

    async def _take(self, agent_id: str, action: str, kw: Mapping[str, Any]) -> str | None:
        """Hold the agent's session here (None) or name the live node that holds it."""
        login = action == "login"
        args: list[str | int] = [agent_id, self.node_id, self.token, round(self.lease_s * 1000),
                                 "1" if login else "0", f"{self.prefix}:node:"]
        if login:
            args += [str(kw["uri"]), str(kw["pool"]), ",".join(kw.get("skills") or ()),
                     int(kw.get("priority", 0))]
        keys = [self._agent_key(agent_id), self._index, self._node_key(self.node_id, "alive")]
        reply: list[str] = await self._acquire(keys=keys, args=args)
        if reply[0] == "missing":
            raise AgentNotFoundError(f"unknown agent {agent_id!r}: not logged in on any node")
        if reply[0] == "owned":
            return reply[1]
        _, epoch, previous, state, taken = reply
        if taken == "1" or agent_id not in self._owned:
            await self._adopt(agent_id, epoch, previous, AgentState(state))
        return None

    async def _adopt(self, agent_id: str, epoch: str, previous: str, state: AgentState) -> None:
        """Start holding a session: put the agent in this node's pool as the registry last saw it.

        Calls of a session taken from a dead node died with it: a talking, reserved or wrap-up agent
        comes back paused (they act again to become ready), a logged-out one logged out.
        """
        raw = cast(dict[str, str], await self.redis.hgetall(self._agent_key(agent_id)))
        self._owned[agent_id] = epoch
        self._lost.discard(agent_id)
        try:
            agent = self.pool.get(agent_id)
        except AgentError:
            agent = self.pool.add(agent_id, raw.get("uri", ""), raw.get("pool", "default"),
                                  skills=[s for s in raw.get("skills", "").split(",") if s],
                                  priority=int(raw.get("priority") or 0))
        if agent.state is AgentState.LOGGED_OUT and state is not AgentState.LOGGED_OUT:
            target = AgentState.READY if state is AgentState.READY else AgentState.PAUSED
            self.pool.transition(agent_id, target, reason="" if target is AgentState.READY else
                                 (raw.get("pause_reason") or "session_moved"))
        if previous and previous != self.node_id:
            log.warning("agent_session_taken_over", agent=agent_id, previous_owner=previous,
                        node=self.node_id, state=state.value)
        else:
            log.info("agent_session_acquired", agent=agent_id, node=self.node_id)
        self._mark(agent_id)
        await self._flush()

    async def _apply(self, agent_id: str, action: str, kw: Mapping[str, Any]) -> AgentRecord:
        """Carry out a command on this node's pool (this node owns the session)."""
        pool = self.pool
        agent = pool.get(agent_id)
        state = agent.state
        if action == "login":
            pool.add(agent_id, str(kw["uri"]), str(kw["pool"]), skills=kw.get("skills") or (),
                     priority=int(kw.get("priority", 0)))
            self._mark(agent_id)
            paused = bool(kw.get("paused"))
            if state is AgentState.LOGGED_OUT:
                pool.transition(agent_id, AgentState.PAUSED if paused else AgentState.READY,
                                reason=str(kw.get("reason") or "login") if paused else "")
        elif action == "ready":
            if state is AgentState.WRAP_UP:
                self._finish_wrap_up(agent_id, "")
            elif state is not AgentState.READY:
                pool.transition(agent_id, AgentState.READY)
        elif action == "pause":
            reason = str(kw.get("reason") or "")
            if not reason:
                raise AgentCommandError("pause needs a reason")
            pool.transition(agent_id, AgentState.PAUSED, reason=reason)
        elif action == "wrap_up_done":
            if state is not AgentState.WRAP_UP:
                raise AgentError(f"agent {agent_id!r} is {state}, not in wrap-up")
            self._finish_wrap_up(agent_id, str(kw.get("disposition") or ""))
        elif action == "logout":
            if state is not AgentState.LOGGED_OUT:
                pool.transition(agent_id, AgentState.LOGGED_OUT)
        await self._flush()
        if action == "logout":
            await self._give_up(agent_id)
        rec = await self.get(agent_id)
        assert rec is not None  # we just wrote it
        return rec

    def _finish_wrap_up(self, agent_id: str, disposition: str) -> None:
        if self.finish_wrap_up is not None:
            self.finish_wrap_up(agent_id, disposition)
        if self.pool.get(agent_id).state is AgentState.WRAP_UP:  # no engine hook, or it declined
            self.pool.transition(agent_id, AgentState.READY)

    async def _give_up(self, agent_id: str) -> None:
        epoch = self._owned.pop(agent_id, None)
        if epoch is not None:
            await self._release(keys=[self._agent_key(agent_id)], args=[self.node_id, epoch])

    async def release_all(self) -> int:
        """Give up every session this node holds (graceful shutdown): other nodes take them at once."""
        released = 0
        for agent_id, epoch in list(self._owned.items()):
            released += int(await self._release(keys=[self._agent_key(agent_id)], args=[self.node_id, epoch]))
        self._owned.clear()
        await self.redis.delete(self._node_key(self.node_id, "alive"))
        if released:
            log.info("agent_sessions_released", node=self.node_id, count=released)
        return released

    async def renew(self) -> list[str]:
        """Renew this node's lease (the heartbeat); returns the agents whose sessions it has lost."""
        held = dict(self._owned)
        args: list[str | int] = [self.token, round(self.lease_s * 1000), f"{self.prefix}:agent:",
                                 self.node_id]
        for agent_id, epoch in held.items():
            args += [agent_id, epoch]
        alive = self._node_key(self.node_id, "alive")
        taken: list[str] = await self._heartbeat(keys=[alive], args=args)
        lost = []
        for agent_id in taken:
            # Unless the node took the session again while the heartbeat ran (a newer epoch).
            if self._owned.get(agent_id) == held[agent_id]:
                self._lose(agent_id)
                lost.append(agent_id)
        return lost

    def _lose(self, agent_id: str) -> None:
        """Another node holds the session now: stop offering the agent calls here."""
        self._owned.pop(agent_id, None)
        log.warning("agent_session_lost", agent=agent_id, node=self.node_id)
        agent = self.pool.get(agent_id)
        if agent.state in (AgentState.READY, AgentState.PAUSED, AgentState.WRAP_UP):
            self.pool.transition(agent_id, AgentState.LOGGED_OUT)
        elif agent.state is not AgentState.LOGGED_OUT:
            self._lost.add(agent_id)  # on a call here: logged out once it is over

    # Mirror -------------------------------------------------------------------------------------

    def _on_change(self, agent: Agent, previous: AgentState) -> None:
        if agent.agent_id in self._owned:
            self._mark(agent.agent_id)
        elif agent.agent_id in self._lost and agent.state in (AgentState.WRAP_UP, AgentState.READY):
            self._lost.discard(agent.agent_id)
            # Not from inside the pool's listener loop: the engine's listener must see this change first.
            asyncio.get_running_loop().call_soon(self._log_out_lost, agent.agent_id)

    def _log_out_lost(self, agent_id: str) -> None:
        agent = self.pool.get(agent_id)
        if agent_id not in self._owned and agent.state in (AgentState.READY, AgentState.WRAP_UP):
            self.pool.transition(agent_id, AgentState.LOGGED_OUT)

    def _mark(self, agent_id: str) -> None:
        self._dirty.add(agent_id)
        self._dirty_event.set()

    async def _flush(self) -> None:
        """Write the state of every owned agent that changed since the last flush."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        self._dirty_event.clear()
        args: list[str | int | float] = [self.node_id, f"{self.prefix}:agent:"]
        for agent_id in dirty:
            epoch = self._owned.get(agent_id)
            if epoch is None:
                continue
            a = self.pool.get(agent_id)
            args += [agent_id, epoch, a.state.value, repr(a.state_since), a.pause_reason, a.call_id or "",
                     a.calls_handled, a.uri, a.pool]
        if len(args) == 2:
            return
        try:
            refused: list[str] = await self._mirror(args=args)
        except BaseException:
            self._dirty |= dirty  # written next time
            self._dirty_event.set()
            raise
        for agent_id in refused:
            if agent_id in self._owned:
                self._lose(agent_id)

    # Routing ------------------------------------------------------------------------------------

    async def _send(self, owner: str, agent_id: str, action: str, kw: Mapping[str, Any]) -> AgentRecord:
        """Ask `owner` to apply the command and wait for its answer."""
        request_id = secrets.token_hex(8)
        reply_key = self._reply_key(request_id)
        await self.redis.xadd(self.inbox(owner), {
            "request": request_id, "agent": agent_id, "action": action, "args": json.dumps(dict(kw)),
            "reply_to": reply_key, "from": self.node_id, "sent_at": repr(time.time()),
        }, maxlen=INBOX_MAXLEN, approximate=True)
        deadline = time.monotonic() + self.command_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OwnerUnavailableError(
                    f"agent {agent_id!r} is held by node {owner!r}, which did not answer within "
                    f"{self.command_timeout_s:g} s; the session moves to another node when its lease expires")
            got = await self.redis.blpop([reply_key], timeout=max(0.01, min(_POLL_S, left)))
            if got is not None:
                break
        answer = json.loads(got[1])
        if "error" in answer:
            kind = _ERRORS.get(answer["error"], AgentRegistryError)
            raise kind(answer["message"])
        return AgentRecord.from_dict(answer["agent"])

    async def _serve(self, fields: Mapping[str, str]) -> None:
        """Apply one command from this node's inbox and answer it."""
        agent_id, action = fields.get("agent", ""), fields.get("action", "")
        answer: dict[str, Any]
        try:
            kw = json.loads(fields.get("args") or "{}")
            # Still ours? (We may have lost it, or it may have moved on.) Forwarding once more is
            # bounded: the next owner applies it or answers with its own error.
            owner = await self._take(agent_id, action, kw)
            if owner is None:
                rec = await self._apply(agent_id, action, kw)
            else:
                rec = await self._send(owner, agent_id, action, kw)
            answer = {"agent": rec.as_dict()}
        except (AgentError, AgentRegistryError) as exc:
            answer = {"error": type(exc).__name__, "message": str(exc)}
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            answer = {"error": "AgentCommandError", "message": f"malformed command: {exc}"}
        reply_key = fields.get("reply_to", "")
        if reply_key:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(reply_key, json.dumps(answer))
                pipe.expire(reply_key, REPLY_TTL_S)
                await pipe.execute()
        log.info("agent_command_served", agent=agent_id, action=action, sender=fields.get("from", ""),
                 ok="error" not in answer)

    # Background work ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Renew leases, mirror state changes and serve the inbox until `stop`; then release sessions."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._heartbeat_loop(stop), name="agent-leases")
                tg.create_task(self._mirror_loop(stop), name="agent-mirror")
                tg.create_task(self._inbox_loop(stop), name="agent-inbox")
        finally:
            try:
                async with asyncio.timeout(2.0):
                    await asyncio.shield(self.release_all())
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("agent_release_failed", error=str(exc))

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        backoff = _Backoff()
        while not stop.is_set():
            try:
                await self.renew()
                backoff.reset()
                wait = self.lease_s / 3
            except RedisError as exc:
                log.warning("agent_lease_renew_failed", error=str(exc))
                wait = backoff.next()
            await _wait(stop, wait)

    async def _mirror_loop(self, stop: asyncio.Event) -> None:
        backoff = _Backoff()
        while not stop.is_set():
            await _wait(self._dirty_event, self.lease_s / 3, also=stop)
            try:
                await self._flush()
                backoff.reset()
            except RedisError as exc:
                log.warning("agent_mirror_failed", error=str(exc))
                await _wait(stop, backoff.next())

    async def _inbox_loop(self, stop: asyncio.Event) -> None:
        key = self.inbox(self.node_id)
        last = "$"  # commands queued before this node started are stale: their senders gave up
        backoff = _Backoff()
        while not stop.is_set():
            try:
                if last == "$":
                    info = cast(list[Any], await self.redis.xrevrange(key, count=1))
                    last = info[0][0] if info else "0-0"
                reply = cast(list[tuple[str, list[tuple[str, dict[str, str]]]]],
                             await self.redis.xread({key: last}, count=100, block=round(_POLL_S * 1000)))
                backoff.reset()
            except RedisError as exc:
                log.warning("agent_inbox_failed", error=str(exc))
                await _wait(stop, backoff.next())
                continue
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    last = entry_id
                    try:
                        await self._serve(fields)
                    except RedisError as exc:
                        log.warning("agent_command_failed", agent=fields.get("agent"), error=str(exc))


class _Backoff:
    """Exponential back-off between failed rounds against Redis: 0.1 s doubling to 5 s."""

    def __init__(self, first_s: float = 0.1, cap_s: float = 5.0) -> None:
        self.first_s, self.cap_s, self._next = first_s, cap_s, first_s

    def next(self) -> float:
        wait, self._next = self._next, min(self.cap_s, self._next * 2)
        return wait

    def reset(self) -> None:
        self._next = self.first_s


async def _wait(event: asyncio.Event, timeout_s: float, *, also: asyncio.Event | None = None) -> None:
    """Wait until `event` (or `also`) is set or `timeout_s` has passed."""
    waiters = [asyncio.ensure_future(event.wait())]
    if also is not None:
        waiters.append(asyncio.ensure_future(also.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
