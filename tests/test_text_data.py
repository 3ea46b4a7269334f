"""Text data: the tokenizer and vocabulary, word vectors, every TFDS text dataset end to end under
mock data, the vocabulary's round trip through a checkpoint, and prediction on text."""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import compact_flax
from compact_flax import checkpoint
from compact_flax import optim
from compact_flax import predict
from compact_flax import text_data
from compact_flax import train
from compact_flax import visualize
from configs import common
from configs import synthetic_text_cct


def test_tokenizer_and_vocabulary():
  assert text_data.tokenize("Don't PANIC: it's 42!") == ["don't", 'panic', ':', "it's", '42', '!']
  texts = ['the cat sat', 'the dog sat', 'the end']
  vocab = text_data.Vocabulary.build(texts, min_freq=1)
  assert vocab.words[:4] == ['<unk>', '<pad>', 'the', 'sat']  # by count, then alphabetically
  assert text_data.Vocabulary.build(texts, min_freq=2).words == ['<unk>', '<pad>', 'the', 'sat']
  assert len(text_data.Vocabulary.build(texts, max_size=1)) == 3
  ids, mask = vocab.encode(['the bird sat down on the mat', ''], 4)
  np.testing.assert_array_equal(ids, [[2, 0, 3, 0], [1, 1, 1, 1]])
  np.testing.assert_array_equal(mask, [[True] * 4, [False] * 4])
  with pytest.raises(ValueError, match='starts with'):
    text_data.Vocabulary(['a', 'b'])


def test_word_vectors_glove_and_word2vec(tmp_path):
  vocab = text_data.Vocabulary(['<unk>', '<pad>', 'cat', 'dog', 'emu'])
  glove = tmp_path / 'glove.txt'
  glove.write_text('cat 1 2 3\nDog 4 5 6\nzebra 7 8 9\n')
  table = text_data.load_word_vectors(str(glove), vocab)
  assert table.shape == (5, 3)
  np.testing.assert_array_equal(table[2:4], [[1, 2, 3], [4, 5, 6]])
  np.testing.assert_array_equal(table[1], 0)
  w2v = tmp_path / 'w2v.txt'
  w2v.write_text('2 3\ncat 1 2 3\nemu 0 0 1\n')
  np.testing.assert_array_equal(text_data.load_word_vectors(str(w2v), vocab)[4], [0, 0, 1])
  bad = tmp_path / 'bad.txt'
  bad.write_text('cat 1 2 3\ndog 4 5\n')
  with pytest.raises(ValueError, match='bad.txt:2'):
    text_data.load_word_vectors(str(bad), vocab)


def test_frozen_embedding_is_outside_the_optimizer():
  config = common.get_text_config()
  config.freeze_embedding, config.grad_clip_norm = True, 1.0
  params = {'embedder': {'embeddings': {'embedding': jnp.ones((5, 3))}},
            'classifier': {'fc': {'kernel': jnp.ones((3, 2))}}}
  tx = optim.create_optimizer(config, lambda step: 0.1)
  grads = {'embedder': {'embeddings': {'embedding': jnp.full((5, 3), 100.)}},
           'classifier': {'fc': {'kernel': jnp.full((3, 2), 0.1)}}}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates['embedder']['embeddings']['embedding'], 0)
  # The clipped norm is the trained parameters' alone: 0.1 * sqrt(6) < 1, nothing clipped.
  expected, _ = optax.adamw(0.1, weight_decay=config.weight_decay).update(
      grads['classifier'], optax.adamw(0.1).init(params['classifier']), params['classifier'])
  np.testing.assert_allclose(updates['classifier']['fc']['kernel'], expected['fc']['kernel'],
                             rtol=1e-6)


def _tiny(config, tmp_path, **dataset_kwargs):
  config.model_kwargs.update(embedding_dim=32, word_embedding_dim=16, num_layers=1)
  config.dataset_kwargs.update(seq_len=16, **dataset_kwargs)
  config.num_epochs, config.warmup_epochs = 1, 0
  config.batch_size = config.eval_batch_size = 8
  config.checkpoint_async = False
  return train.train_and_evaluate(config, str(tmp_path))


# (dataset, dataset_kwargs): every known TFDS text dataset and one given by its features.
TFDS_TEXT = [('ag_news_subset', {}), ('trec', {'label_key': 'label-fine'}),
             ('imdb_reviews', {}), ('yelp_polarity_reviews', {}), ('glue/sst2', {}),
             ('snli', {'text_keys': ('premise', 'hypothesis')})]


@pytest.mark.parametrize('name,kwargs', TFDS_TEXT)
def test_tfds_text_dataset_end_to_end(name, kwargs, tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  config = common.get_text_config()
  config.dataset = name
  with tfds.testing.mock_data(num_examples=16):  # one vocabulary size: shared compilations
    record = _tiny(config, tmp_path, max_vocab=30, **kwargs)
  assert record['step'] == 2 and np.isfinite(record['eval_loss'])
  spec = checkpoint.read_spec(str(tmp_path))
  assert spec['data']['text']['vocab'][:2] == ['<unk>', '<pad>']
  assert len(spec['data']['text']['vocab']) == spec['model_kwargs']['vocab_size'] <= 32
  assert len(spec['data']['class_names']) == spec['model_kwargs']['num_classes']


def test_unknown_text_features_say_what_there_is(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  config = common.get_text_config()
  config.dataset = 'snli'
  with tfds.testing.mock_data(num_examples=16), pytest.raises(train.TrainingError,
                                                             match='premise'):
    _tiny(config, tmp_path, text_keys=('question',))


def test_vocabulary_round_trip_prediction_and_word_vectors(tmp_path):
  glove = tmp_path / 'vectors.txt'
  rng = np.random.default_rng(0)
  glove.write_text(''.join(f'{w} ' + ' '.join(f'{x:.3f}' for x in rng.normal(size=16)) + '\n'
                           for w in ('goal', 'match', 'market', 'the')))
  config = synthetic_text_cct.get_config()
  config.freeze_embedding = True
  config.dataset_kwargs.update(num_train=256, num_eval=64)
  workdir = tmp_path / 'run'
  _tiny(config, workdir, word_vectors=str(glove))
  source = train.get_source(config)
  model, variables = compact_flax.load_model(str(workdir))
  spec = checkpoint.read_spec(str(workdir))
  data = spec['data']
  assert data['text']['vocab'] == source.normalization['text']['vocab']
  # Frozen: the embedding is still the word vectors it started from.
  table = np.asarray(variables['params']['embedder']['embeddings']['embedding'])
  np.testing.assert_array_equal(table, source.word_vectors)
  texts = ['the striker scored a goal in the match', 'market prices fell']
  ids, mask = text_data.Vocabulary(data['text']['vocab']).encode(texts, model.seq_len)
  probs = jax.nn.softmax(model.apply(variables, ids, mask=mask))
  top = predict.predict_texts(model, variables, data, texts, top_k=2)
  for p, row in zip(np.asarray(probs), top):
    assert row[0] == (data['class_names'][int(p.argmax())], pytest.approx(float(p.max()), 1e-5))
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert predict.main(['--checkpoint', str(workdir), '--text', texts[0], '--top_k', '1']) == 0
  assert data['class_names'][int(np.asarray(probs)[0].argmax())] in out.getvalue()
  assert predict.main(['--checkpoint', str(workdir), 'image.png']) == 1
  html_path = tmp_path / 'words.html'
  with contextlib.redirect_stdout(io.StringIO()):
    assert visualize.main(['--checkpoint', str(workdir), '--text', texts[0],
                           '--output', str(html_path)]) == 0
  page = html_path.read_text()
  assert page.count('<span') == len(text_data.tokenize(texts[0])) and 'striker' in page
  weights = visualize.word_weights(model, variables, ids, mask)
  np.testing.assert_allclose(weights.sum(-1), 1, rtol=1e-5)
  assert (weights[~mask] == 0).all()
