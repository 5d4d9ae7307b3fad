"""A tiny BERT fine-tuned with the Hugging Face Trainer, recorded by ml_persistence (seconds on a CPU, no downloads).

    pip install 'ml_persistence[transformers]'
    python examples/transformers_example.py          # then: ml-persistence ls / show ID / ui
"""

import argparse

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from ml_persistence.integrations.transformers import MLPersistenceCallback


class RandomTokens(torch.utils.data.Dataset):
    """Random token ids with random binary labels: a stand-in for a tokenized dataset."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 100, (n, 16), generator=generator)
        self.labels = torch.randint(0, 2, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=2)
    args = parser.parse_args()

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    training_args = TrainingArguments(
        output_dir="transformers_checkpoints",
        num_train_epochs=args.epochs,
        per_device_train_batch_size=16,
        learning_rate=5e-4,
        logging_steps=4,
        eval_strategy="epoch",
        save_strategy="epoch",  # each checkpoint is registered as a model ...
        metric_for_best_model="eval_loss",  # ... with its eval_loss, the best one marked
        load_best_model_at_end=True,
        use_cpu=True,
        disable_tqdm=True,
        seed=42,
        report_to="none",  # or report_to=["ml_persistence"] after importing ml_persistence.integrations.transformers
    )
    callback = MLPersistenceCallback(tags=["example", "bert"])  # the one line that records the run
    trainer = Trainer(
        model=BertForSequenceClassification(config),
        args=training_args,
        train_dataset=RandomTokens(128, seed=0),
        eval_dataset=RandomTokens(64, seed=1),
        callbacks=[callback],
    )
    trainer.train()
    trainer.evaluate(RandomTokens(64, seed=2), metric_key_prefix="test")  # lands in the same experiment

    experiment_id = callback.experiment_id
    print(f"recorded experiment {experiment_id} in ml_experiments.db; look at it with:")
    print(f"  ml-persistence show {experiment_id}")
    print(f"  ml-persistence metrics {experiment_id} eval_loss")


if __name__ == "__main__":
    main()
