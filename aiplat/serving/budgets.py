"""Hard daily budgets the gateway enforces before it spends: reserve, call, settle.

Before a request goes upstream the gateway reserves its worst-case token cost (every byte of the
body counted as a prompt token — a token is at least one byte — plus `max_tokens`, which the
gateway sets when the client did not) under the ledger's lock. The reservation fails (429) when
the team's spent + reserved + this request would pass its hard budget, so N concurrent requests
can never all pass a check that each alone would pass. When the answer is done the reservation is
settled to the real cost (the usage the upstream reported, or what the client received if it hung up).

Spend is token cost at the platform's rates (the part the gateway can know per request; GPU-hours
are attributed later by the cost report). Days are UTC days, like the cost report's.

`InProcessLedger` holds the books for one gateway process and starts from the day's request log,
so a restart does not forget the day's spend. The gateway runs one replica by default
(aiplat.serving.gateway_k8s); several replicas would each enforce the whole budget, so a shared
ledger (e.g. one atomic `UPDATE ... WHERE spent + reserved + x <= budget` in PostgreSQL) is the
implementation to add before scaling out — the interface is this base class.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone

from aiplat.operations.cost import CostRates
from aiplat.operations.requests import RequestLog
from aiplat.serving.gateway_auth import normalize_team


class OverBudget(RuntimeError):
    def __init__(self, team: str, budget: float, committed: float, needed: float) -> None:
        super().__init__(f"{team} has reached its hard daily budget of {budget:.4f} "
                         f"(spent and reserved today: {committed:.4f}; this request may cost up to {needed:.4f})")
        self.team, self.budget, self.committed, self.needed = team, budget, committed, needed


@dataclass(frozen=True)
class Reservation:
    team: str
    day: date
    amount: float


def token_cost(rates: CostRates, prompt_tokens: int, completion_tokens: int) -> float:
    return prompt_tokens / 1000 * rates.prompt_per_1k_tokens + completion_tokens / 1000 * rates.completion_per_1k_tokens


class SpendLedger(ABC):
    """Books of what each team spent and has reserved today."""

    def __init__(self, rates: CostRates, hard_budgets: Mapping[str, float]) -> None:
        self.rates = rates
        self.hard_budgets = {normalize_team(team): float(amount) for team, amount in hard_budgets.items()}

    def limited(self, team: str) -> bool:
        return team in self.hard_budgets

    @abstractmethod
    def reserve(self, team: str, prompt_tokens: int, completion_tokens: int) -> Reservation:
        """Reserve the worst-case cost or raise OverBudget."""

    @abstractmethod
    def settle(self, reservation: Reservation, prompt_tokens: int, completion_tokens: int) -> None:
        """Replace the reservation by the real cost."""

    @abstractmethod
    def committed(self, team: str) -> tuple[float, float]:
        """(spent, reserved) today."""


class InProcessLedger(SpendLedger):
    def __init__(self, rates: CostRates, hard_budgets: Mapping[str, float], *,
                 spent_today: Mapping[str, float] | None = None,
                 today: Callable[[], date] = lambda: datetime.now(timezone.utc).date()) -> None:
        super().__init__(rates, hard_budgets)
        self._today = today
        self._lock = threading.Lock()
        self._day = today()
        self._spent: dict[str, float] = {normalize_team(t): v for t, v in (spent_today or {}).items()}
        self._reserved: dict[str, float] = {}

    @classmethod
    def from_request_log(cls, log: RequestLog, rates: CostRates, hard_budgets: Mapping[str, float]) -> InProcessLedger:
        today = datetime.now(timezone.utc).date()
        records, _rejected = log.read(today, today)
        spent: dict[str, float] = {}
        for r in records:
            team = normalize_team(r.team)
            spent[team] = spent.get(team, 0.0) + token_cost(rates, r.prompt_tokens, r.completion_tokens)
        return cls(rates, hard_budgets, spent_today=spent)

    def _roll(self) -> None:
        day = self._today()
        if day != self._day:  # a new UTC day: yesterday's spend no longer counts; open reservations still do
            self._day, self._spent = day, {}

    def reserve(self, team: str, prompt_tokens: int, completion_tokens: int) -> Reservation:
        amount = token_cost(self.rates, prompt_tokens, completion_tokens)
        with self._lock:
            self._roll()
            budget = self.hard_budgets.get(team)
            committed = self._spent.get(team, 0.0) + self._reserved.get(team, 0.0)
            if budget is not None and committed + amount > budget:
                raise OverBudget(team, budget, committed, amount)
            self._reserved[team] = self._reserved.get(team, 0.0) + amount
            return Reservation(team, self._day, amount)

    def settle(self, reservation: Reservation, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self._reserved[reservation.team] = max(0.0, self._reserved.get(reservation.team, 0.0) - reservation.amount)
            self._roll()
            if reservation.day == self._day:
                cost = token_cost(self.rates, prompt_tokens, completion_tokens)
                self._spent[reservation.team] = self._spent.get(reservation.team, 0.0) + cost

    def committed(self, team: str) -> tuple[float, float]:
        with self._lock:
            self._roll()
            return self._spent.get(team, 0.0), self._reserved.get(team, 0.0)
