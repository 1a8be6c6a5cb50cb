import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from explorl.data.loaders import columns_of, load_rows
from explorl.errors import UserError


def sha_id(prompt):
    return hashlib.sha1(json.dumps(prompt, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


CONV_A = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
]
CONV_B = [{"role": "user", "content": "What is 3+3?"}]


def test_jsonl_standard(tmp_path):
    path = write_jsonl(
        tmp_path / "data.jsonl",
        [{"prompt": "What is 2+2?", "ground_truth": "4"}, {"prompt": "Name: é", "answer": 7}],
    )
    path.write_text(path.read_text(encoding="utf-8") + "\n  \n", encoding="utf-8")
    rows = load_rows(path)
    assert rows == [
        {"prompt": "What is 2+2?", "ground_truth": "4", "prompt_id": sha_id("What is 2+2?")},
        {"prompt": "Name: é", "answer": 7, "prompt_id": sha_id("Name: é")},
    ]
    assert load_rows(str(path)) == rows


def test_jsonl_conversational_with_ids(tmp_path):
    path = write_jsonl(
        tmp_path / "conv.jsonl",
        [
            {"prompt": CONV_A, "solution": "4", "id": 17},
            {"prompt": CONV_B, "solution": "6", "prompt_id": "p-b", "id": 3},
        ],
    )
    rows = load_rows(path)
    assert rows == [
        {"prompt": CONV_A, "solution": "4", "id": 17, "prompt_id": "17"},
        {"prompt": CONV_B, "solution": "6", "id": 3, "prompt_id": "p-b"},
    ]


def test_json_list(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"prompt": "a", "x": 1}, {"prompt": CONV_B}]), encoding="utf-8")
    rows = load_rows(path)
    assert rows == [
        {"prompt": "a", "x": 1, "prompt_id": sha_id("a")},
        {"prompt": CONV_B, "prompt_id": sha_id(CONV_B)},
    ]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": [{"prompt": "a", "x": 1}]}), encoding="utf-8")
    assert load_rows(wrapped) == rows[:1]


def test_json_file_holding_json_lines(tmp_path):
    path = write_jsonl(tmp_path / "data.json", [{"prompt": "a"}, {"prompt": "b"}])
    assert [r["prompt"] for r in load_rows(path)] == ["a", "b"]


def test_parquet_trl(tmp_path):
    path = tmp_path / "train.parquet"
    table = pa.table({"prompt": ["p1", "p2"], "ground_truth": ["1", "2"], "score": [0.5, 1.5]})
    pq.write_table(table, path)
    rows = load_rows(path)
    assert rows == [
        {"prompt": "p1", "ground_truth": "1", "score": 0.5, "prompt_id": sha_id("p1")},
        {"prompt": "p2", "ground_truth": "2", "score": 1.5, "prompt_id": sha_id("p2")},
    ]


def verl_table():
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    reward_model = pa.struct([("ground_truth", pa.string()), ("style", pa.string())])
    extra_info = pa.struct([("index", pa.int64()), ("split", pa.string())])
    return pa.table(
        {
            "data_source": pa.array(["openai/gsm8k", "openai/gsm8k"]),
            "prompt": pa.array([CONV_A, CONV_B], type=pa.list_(message)),
            "ability": pa.array(["math", "math"]),
            "reward_model": pa.array(
                [
                    {"ground_truth": "4", "style": "rule"},
                    {"ground_truth": "6", "style": "rule"},
                ],
                type=reward_model,
            ),
            "extra_info": pa.array(
                [{"index": 0, "split": "train"}, {"index": 1, "split": "train"}], type=extra_info
            ),
        }
    )


def test_parquet_verl_layout(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(verl_table(), path)
    rows = load_rows(path)
    assert rows == [
        {
            "data_source": "openai/gsm8k",
            "prompt": CONV_A,
            "ability": "math",
            "reward_model": {"ground_truth": "4", "style": "rule"},
            "extra_info": {"index": 0, "split": "train"},
            "ground_truth": "4",
            "prompt_id": sha_id(CONV_A),
        },
        {
            "data_source": "openai/gsm8k",
            "prompt": CONV_B,
            "ability": "math",
            "reward_model": {"ground_truth": "6", "style": "rule"},
            "extra_info": {"index": 1, "split": "train"},
            "ground_truth": "6",
            "prompt_id": sha_id(CONV_B),
        },
    ]
    assert all(type(r["prompt"]) is list and type(r["prompt"][0]) is dict for r in rows)
    assert load_rows(path) == rows


def test_numpy_values_become_plain_python():
    rows = load_rows(
        [
            {
                "prompt": np.array(CONV_B, dtype=object),
                "reward_model": {"ground_truth": np.str_("6"), "style": "rule"},
                "extra_info": {"index": np.int64(3), "weights": np.array([1.5, 2.5])},
            }
        ]
    )
    row = rows[0]
    assert row["prompt"] == CONV_B and type(row["prompt"]) is list
    assert type(row["ground_truth"]) is str and row["ground_truth"] == "6"
    assert type(row["extra_info"]["index"]) is int
    assert row["extra_info"]["weights"] == [1.5, 2.5]
    assert type(row["extra_info"]["weights"][0]) is float
    assert row["prompt_id"] == sha_id(CONV_B)


def test_hf_dataset_object_and_saved_dir(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(
        [{"prompt": "p1", "answer": "1", "id": 5}, {"prompt": "p2", "answer": "2", "id": 6}]
    )
    expected = [
        {"prompt": "p1", "answer": "1", "id": 5, "prompt_id": "5"},
        {"prompt": "p2", "answer": "2", "id": 6, "prompt_id": "6"},
    ]
    assert load_rows(ds) == expected
    ds.save_to_disk(str(tmp_path / "single"))
    assert load_rows(tmp_path / "single") == expected
    ds_dict = datasets.DatasetDict({"train": ds, "test": ds.select([0])})
    ds_dict.save_to_disk(str(tmp_path / "dict"))
    assert load_rows(tmp_path / "dict") == expected
    verl = datasets.Dataset(verl_table())
    assert [r["ground_truth"] for r in load_rows(verl)] == ["4", "6"]


def test_list_of_dicts_not_mutated():
    source = [{"prompt": "hello", "ground_truth": "x"}]
    rows = load_rows(source)
    assert rows == [{"prompt": "hello", "ground_truth": "x", "prompt_id": sha_id("hello")}]
    assert source == [{"prompt": "hello", "ground_truth": "x"}]


def test_prompt_id_is_stable_and_key_order_independent():
    a = load_rows([{"prompt": [{"role": "user", "content": "hi"}]}])[0]["prompt_id"]
    b = load_rows([{"prompt": [{"content": "hi", "role": "user"}]}])[0]["prompt_id"]
    assert a == b == sha_id([{"role": "user", "content": "hi"}])
    assert len(a) == 16


def test_columns_of():
    rows = load_rows([{"prompt": "a", "x": 1}, {"prompt": "b", "y": 2}])
    assert columns_of(rows) == {
        "x": [1, None],
        "prompt_id": [sha_id("a"), sha_id("b")],
        "y": [None, 2],
    }


def assert_user_error(source, *fragments, **kwargs):
    with pytest.raises(UserError) as info:
        load_rows(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    assert_user_error(path, f"train: file not found: {path}", name="train")


def test_unknown_extension(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("prompt\nhi\n")
    assert_user_error(path, "data.csv", "'.csv'")


def test_malformed_jsonl_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c" "x"}\n', encoding="utf-8")
    assert_user_error(path, f"{path}:3: invalid JSON (")


def test_malformed_json_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n{"prompt": "a"},\n{"prompt" "b"}\n]\n', encoding="utf-8")
    assert_user_error(path, f"{path}:3: invalid JSON (")


def test_missing_prompt_column(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "a"}, {"question": "b"}])
    assert_user_error(path, f"{path}:2: missing 'prompt' column", "question")
    parquet = tmp_path / "train.parquet"
    pq.write_table(pa.table({"question": ["a"]}), parquet)
    assert_user_error(parquet, f"{parquet}: row 0: missing 'prompt' column")


def test_empty_prompt(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "a"}, {"prompt": "  "}])
    assert_user_error(path, f"{path}:2: prompt: empty prompt")
    parquet = tmp_path / "train.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", "c", "d", ""]}), parquet)
    assert_user_error(parquet, f"{parquet}: row 4: prompt: empty prompt")
    assert_user_error([{"prompt": []}], "dataset: row 0: prompt: empty prompt")


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [
        (42, "prompt: expected a string or a list"),
        ({"role": "user", "content": "hi"}, "prompt: expected a string or a list"),
        (["hi"], "prompt[0]: expected a {role, content} message"),
        ([{"role": "user"}], "prompt[0]: missing 'content'"),
        ([{"role": "user", "content": "a"}, {"role": 1, "content": "b"}], "prompt[1]: 'role'"),
        ([{"role": "user", "content": None}], "prompt[0]: 'content' must be a string"),
        (None, "prompt: missing value"),
    ],
)
def test_prompt_of_wrong_type(tmp_path, prompt, fragment):
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "ok"}, {"prompt": prompt}])
    assert_user_error(path, f"{path}:2: {fragment}")


def test_non_utf8_jsonl(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n')
    assert_user_error(path, f"{path}:2: not valid UTF-8")


def test_non_object_jsonl_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a"}\n[1, 2]\n', encoding="utf-8")
    assert_user_error(path, f"{path}:2: expected an object")


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    path.write_text("\n\n" if suffix == ".jsonl" else "", encoding="utf-8")
    assert_user_error(path, str(path), "empty")


def test_empty_sources(tmp_path):
    assert_user_error([], "dataset", "empty")
    path = tmp_path / "data.json"
    path.write_text("[]", encoding="utf-8")
    assert_user_error(path, str(path), "empty")


def test_corrupt_parquet_and_unsupported_type(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_bytes(b"not a parquet file")
    assert_user_error(path, f"{path}: cannot read parquet file")
    assert_user_error(42, "dataset: unsupported data source")


def test_directory_that_is_not_a_dataset(tmp_path):
    (tmp_path / "d").mkdir()
    assert_user_error(tmp_path / "d", "not a data set saved")
