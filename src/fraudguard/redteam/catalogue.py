"""The attacks `fraudguard redteam` runs, in order: name -> function (RedTeamContext -> AttackResult).
Adding an attack is adding one module and one entry here."""

from __future__ import annotations

from fraudguard.redteam.backdoor import run_backdoor
from fraudguard.redteam.base import AttackFn
from fraudguard.redteam.boundary import run_boundary
from fraudguard.redteam.fgsm import run_fgsm
from fraudguard.redteam.hopskipjump import run_hopskipjump
from fraudguard.redteam.label_flip import run_label_flip
from fraudguard.redteam.pgd import run_pgd
from fraudguard.redteam.split_payments import run_split_payments
from fraudguard.redteam.terminal_dilution import run_terminal_dilution

ATTACKS: dict[str, AttackFn] = {
    "label_flip": run_label_flip,
    "backdoor": run_backdoor,
    "terminal_dilution": run_terminal_dilution,
    "fgsm": run_fgsm,
    "pgd": run_pgd,
    "hopskipjump": run_hopskipjump,
    "boundary": run_boundary,
    "split_payments": run_split_payments,
}
# Attacks that import data into the scratch project (which then needs git and DVC).
POISONING = ("label_flip", "backdoor", "terminal_dilution")
