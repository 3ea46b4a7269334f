"""Text classification data: a word tokenizer, a vocabulary, TFDS text datasets and a synthetic task.

Every text source is an `InMemorySource` whose inputs are word ids (N, seq_len) int32 and a
`token_mask` (N, seq_len) bool: texts are short and few enough to hold in host memory, and the
trainer's batching, sharding and resume apply unchanged. The vocabulary travels with every
checkpoint (`normalization['text']`), so `predict` maps words to the ids the model was trained on.
"""

import collections
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from compact_flax import data as data_lib

UNK, PAD = '<unk>', '<pad>'  # ids 0 and 1: the official Embedder's padding_idx=1 (torchtext's order)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")

# TFDS name -> (text features joined with a space, label feature, train split, eval split).
TEXT_DATASETS = {
    'ag_news_subset': (('title', 'description'), 'label', 'train', 'test'),
    'trec': (('text',), 'label-coarse', 'train', 'test'),
    'imdb_reviews': (('text',), 'label', 'train', 'test'),
    'yelp_polarity_reviews': (('text',), 'label', 'train', 'test'),
    'glue/sst2': (('sentence',), 'label', 'train', 'validation'),  # test labels are -1
}


def tokenize(text: str) -> List[str]:
  """Lower-cased words (with an apostrophe suffix kept: "don't") and single punctuation marks."""
  return _WORD.findall(text.lower())


class Vocabulary:
  """Words by id: `<unk>` 0, `<pad>` 1, then the training split's words by falling count."""

  def __init__(self, words: Sequence[str]):
    if list(words[:2]) != [UNK, PAD]:
      raise ValueError(f'A vocabulary starts with {UNK!r}, {PAD!r}; got {list(words[:2])}.')
    self.words = list(words)
    self.index = {w: i for i, w in enumerate(self.words)}

  def __len__(self):
    return len(self.words)

  @classmethod
  def build(cls, texts: Iterable[str], *, min_freq: int = 1, max_size: Optional[int] = None):
    """From training texts: words seen at least `min_freq` times, the `max_size` most frequent
    (ties by word, so the same texts always give the same ids)."""
    counts = collections.Counter(w for t in texts for w in tokenize(t))
    ranked = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    return cls([UNK, PAD] + ranked[:max_size])

  def encode(self, texts: Sequence[str], seq_len: int) -> Tuple[np.ndarray, np.ndarray]:
    """(ids (N, seq_len) int32, mask (N, seq_len) bool): truncated or padded with `<pad>`."""
    ids = np.ones((len(texts), seq_len), np.int32)
    mask = np.zeros_like(ids, bool)
    for row, text in enumerate(texts):
      words = [self.index.get(w, 0) for w in tokenize(text)[:seq_len]]
      ids[row, :len(words)], mask[row, :len(words)] = words, True
    return ids, mask


def load_word_vectors(path: str, vocab: Vocabulary, *, seed: int = 0) -> np.ndarray:
  """A (len(vocab), dim) matrix from a GloVe or word2vec text file (`word v1 v2 ...` per line; a
  word2vec header line is skipped). Words the file lacks get N(0, s^2) rows, s the file's own
  standard deviation; `<pad>` is zero."""
  found: Dict[int, np.ndarray] = {}
  dim = None
  with open(path, encoding='utf-8', errors='replace') as f:
    for line_no, line in enumerate(f):
      parts = line.rstrip().split(' ')
      if line_no == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
        continue  # word2vec's "count dim" header
      if dim is None:
        dim = len(parts) - 1
      if len(parts) - 1 != dim:
        raise ValueError(f'{path}:{line_no + 1}: {len(parts) - 1} numbers where earlier lines have '
                         f'{dim}; expected "word v1 ... v{dim}".')
      i = vocab.index.get(parts[0].lower())
      if i is not None and i not in found:
        found[i] = np.asarray(parts[1:], np.float32)
  if not found:
    raise ValueError(f'{path}: no word of the vocabulary found; is it a GloVe/word2vec text file?')
  known = np.stack(list(found.values()))
  table = np.random.default_rng(seed).normal(0, known.std(), (len(vocab), dim)).astype(np.float32)
  for i, v in found.items():
    table[i] = v
  table[1] = 0
  return table


def text_source(name: str, train: Tuple[Sequence[str], np.ndarray],
                evaluation: Tuple[Sequence[str], np.ndarray], class_names: Sequence[str], *,
                seq_len: int, min_freq: int = 1, max_vocab: Optional[int] = None,
                word_vectors: Optional[str] = None) -> data_lib.InMemorySource:
  """Texts and labels of two splits -> a source with the vocabulary of the training split."""
  vocab = Vocabulary.build(train[0], min_freq=min_freq, max_size=max_vocab)
  (tr_ids, tr_mask), (ev_ids, ev_mask) = (vocab.encode(t, seq_len) for t in (train[0], evaluation[0]))
  source = data_lib.InMemorySource(
      name, {'ids': tr_ids, 'token_mask': tr_mask}, np.asarray(train[1], np.int32),
      {'ids': ev_ids, 'token_mask': ev_mask}, np.asarray(evaluation[1], np.int32), class_names)
  source.normalization = {'text': {'vocab': vocab.words, 'seq_len': seq_len,
                                   'tokenizer': 'lowercase-words'}}
  source.model_kwargs = {'vocab_size': len(vocab), 'seq_len': seq_len}
  source.word_vectors = None
  if word_vectors:
    source.word_vectors = load_word_vectors(word_vectors, vocab)
    source.model_kwargs['word_embedding_dim'] = source.word_vectors.shape[1]
  return source


def _read_split(builder, split: str, text_keys, label_key) -> Tuple[List[str], np.ndarray]:
  texts, labels = [], []
  for ex in builder.as_dataset(split=split).as_numpy_iterator():
    texts.append(' '.join(ex[k].decode('utf-8', 'replace') for k in text_keys))
    labels.append(ex[label_key])
  return texts, np.asarray(labels, np.int32)


def tfds_text_source(name: str, builder, *, seq_len: int = 64, text_keys=None, label_key=None,
                     min_freq: int = 1, max_vocab: Optional[int] = None,
                     word_vectors: Optional[str] = None, train_split=None,
                     eval_split=None) -> data_lib.InMemorySource:
  """A prepared TFDS text-classification dataset (its `builder`): the known ones by name
  (`TEXT_DATASETS`), any other given its `text_keys` and `label_key`."""
  keys, label, train_default, eval_default = TEXT_DATASETS.get(name, (None, 'label', 'train', 'test'))
  text_keys = tuple(text_keys or keys or ())
  label_key = label_key or label
  features = builder.info.features
  if not text_keys:
    raise ValueError(f"'{name}' is not a known text dataset ({sorted(TEXT_DATASETS)}); name its "
                     f'text features with --config.dataset_kwargs.text_keys (it has '
                     f'{sorted(features)}).')
  missing = [k for k in text_keys + (label_key,) if k not in features]
  if missing:
    raise ValueError(f"'{name}' has no feature(s) {missing}; it has {sorted(features)}.")
  train = _read_split(builder, train_split or train_default, text_keys, label_key)
  evaluation = _read_split(builder, eval_split or eval_default, text_keys, label_key)
  return text_source(name, train, evaluation, features[label_key].names, seq_len=seq_len,
                     min_freq=min_freq, max_vocab=max_vocab, word_vectors=word_vectors)


# --- A synthetic task that needs no download ----------------------------------------------------

_TOPICS = {
    'world': 'election minister government president war treaty embassy parliament refugees '
             'protest capital border summit diplomat military ceasefire vote rebels'.split(),
    'sports': 'match goal coach season league championship player team score tournament cup '
              'striker olympic medal referee injury final victory'.split(),
    'business': 'market shares profit company investors bank stocks revenue merger economy '
                'quarter prices earnings deal oil dollar growth trade'.split(),
    'sci/tech': 'software researchers internet computer space scientists nasa chip wireless '
                'study launch data network device genome laboratory robot'.split(),
}
_FILLER = ('the a of to in and on for with at by from as that this it its was is will has have '
           'after before new said says reported over more than first last year week today '
           'people group report officials two three').split()


def synthetic_text(num_train: int = 4000, num_eval: int = 1000, seq_len: int = 48,
                   seed: int = 0, min_freq: int = 1, max_vocab: Optional[int] = None,
                   word_vectors: Optional[str] = None) -> data_lib.InMemorySource:
  """SYNTHETIC, made up on the spot: sentences of 6-40 words, each word a keyword of the sentence's
  topic (one of AG News's four classes) with probability 0.2, of a random topic with 0.05, else a
  filler word. For trying the text models without a download, not a benchmark."""
  rng = np.random.default_rng(seed)
  names = list(_TOPICS)

  def make(n):
    texts, labels = [], rng.integers(0, len(names), n)
    for label in labels:
      words = []
      for _ in range(rng.integers(6, 41)):
        r = rng.random()
        pool = (_TOPICS[names[label]] if r < 0.2 else
                _TOPICS[names[rng.integers(len(names))]] if r < 0.25 else _FILLER)
        words.append(pool[rng.integers(len(pool))])
      texts.append(' '.join(words))
    return texts, labels

  train, evaluation = make(num_train), make(num_eval)
  return text_source('synthetic_text', train, evaluation, names, seq_len=seq_len,
                     min_freq=min_freq, max_vocab=max_vocab, word_vectors=word_vectors)
