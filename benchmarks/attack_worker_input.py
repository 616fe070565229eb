"""Attacks on what a worker is sent (issue 13): unit strings that make astropy compute
``10**1000000000``, mesh sizes that pin a core, a ``visible_if`` naming a hierarchy
method, and two ``command`` keys in one body. Part of benchmarks/attacks.py's
``Attacks``: each must be refused with a clear reason.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from attack_base import BOMB_UNIT, AttackBase, Outcome, refused_outcome, repeated


class WorkerInputAttacks(AttackBase):
    """``unit_*``, ``mesh_*``, ``visible_if`` and ``duplicate_command``: requests to the
    attacker's session whose content would cost its worker (or its files) dearly."""

    async def _bundle(self) -> list[dict[str, Any]]:
        answer = await self.attacker.send(self.sid, "get_bundle")
        reply = answer.json()
        if not (isinstance(reply, dict) and reply.get("success")):
            raise RuntimeError(f"get_bundle: {answer.status} {answer.head()}")
        bundle: list[dict[str, Any]] = orjson.loads(reply["result"]["bundle"])
        return bundle

    # units

    async def unit_get_value(self) -> Outcome:
        body = {"command": "get_value", "twig": "period@binary", "unit": BOMB_UNIT}
        return await self._send_repeated("/send get_value unit", body)

    async def unit_set_value(self) -> Outcome:
        body = {"command": "set_value", "twig": "period@binary", "value": 1.0, "unit": BOMB_UNIT}
        return await self._send_repeated("/send set_value unit", body)

    async def unit_attach_parameters(self) -> Outcome:
        param = {
            "ptype": "float",
            "qualifier": "attack",
            "value": 1.0,
            "description": "a unit bomb",
            "context": "ui",
            "default_unit": BOMB_UNIT,
        }
        body = {"command": "attach_parameters", "parameters": [param]}
        return await self._send_repeated("/send attach_parameters default_unit", body)

    async def unit_bundle(self) -> Outcome:
        bundle = await self._bundle()
        edited = 0
        for param in bundle:
            if param.get("default_unit") and param.get("qualifier") == "period":
                param["default_unit"] = BOMB_UNIT
                edited += 1
        body = orjson.dumps({"command": "load_bundle", "bundle": orjson.dumps(bundle).decode()})
        outcome = await self._send_repeated("/send load_bundle default_unit", body)
        outcome.extra.update(edited_parameters=edited, body_bytes=len(body))
        return outcome

    # mesh cost

    async def mesh_run_compute(self) -> Outcome:
        body = {"command": "run_compute", "ntriangles": 200_000}
        return await self._send_repeated("/send run_compute ntriangles=200000", body)

    async def mesh_set_value(self) -> Outcome:
        body = {"command": "set_value", "twig": "ntriangles@primary@phoebe01", "value": 200_000}
        return await self._send_repeated("/send set_value ntriangles@primary@phoebe01", body)

    async def mesh_columns(self, times: int = 2000) -> Outcome:
        """A mesh dataset with every column at ``times`` times, then run_compute: refused
        at the dataset or at the run (whichever refuses first decides)."""
        grid = [round(i / times, 6) for i in range(times)]
        add = await self.attacker.send(
            self.sid,
            "add_dataset",
            kind="mesh",
            dataset="attack_mesh",
            compute_times=grid,
            columns=["*"],
            overwrite=True,
        )
        if add.refused:
            return refused_outcome(
                f"/send add_dataset mesh columns=['*'] x {times} times", [add], refused_at="add"
            )
        try:
            answers = await repeated(
                lambda: self.attacker.send(self.sid, "run_compute"), self.window
            )
        finally:
            await self.attacker.send(self.sid, "remove_dataset", dataset="attack_mesh")
        return refused_outcome(
            f"mesh columns=['*'] x {times} times, then /send run_compute",
            answers,
            refused_at="run_compute",
            add_dataset_s=round(add.seconds, 3),
        )

    # visible_if and the command name

    async def visible_if(self) -> Outcome:
        bundle = await self._bundle()
        edited = 0
        for param in bundle:
            if param.get("context") == "component":
                param["visible_if"] = "hierarchy.save:x"
                edited += 1
        before = self._session_files(self.sid)
        body = orjson.dumps({"command": "load_bundle", "bundle": orjson.dumps(bundle).decode()})
        outcome = await self._send_repeated("/send load_bundle visible_if=hierarchy.save:x", body)
        outcome.extra.update(
            edited_parameters=edited,
            session_files_before=before,
            session_files_after=self._session_files(self.sid),
        )
        return outcome

    def _session_files(self, sid: str) -> int | None:
        base = os.path.join(self.hub.data, "sessions")
        for root, dirs, _ in os.walk(base):
            if sid in dirs:
                return sum(len(files) for _, _, files in os.walk(os.path.join(root, sid)))
        return None

    async def duplicate_command(self) -> Outcome:
        pad = "x" * (300 * 1024)
        body = (
            b'{"command": "get_datasets", "pad": "' + pad.encode() + b'", "command": "run_compute"}'
        )
        outcome = await self._send_repeated("/send two 'command' keys, 300 KiB body", body)
        outcome.extra["body_bytes"] = len(body)
        return outcome
