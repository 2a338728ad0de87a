// Greedy decoding of an mxport export folder on Node.js: onnxruntime-node + the folder's tokenizer.json.
// The proof that the folder runs where there is no Python at all.
//
//   npm ci --prefix examples/node            (once: installs onnxruntime-node and @huggingface/tokenizers)
//   node examples/node/generate.mjs EXPORT_DIR --prompt "Hello" [--max-new-tokens 32] [--json]
//   node examples/node/generate.mjs EXPORT_DIR --ids 5,17,99 [--max-new-tokens 32] [--json]
//
// The loop follows the model I/O contract (docs/ARCHITECTURE.md):
//   prefill: input_ids [1,S], attention_mask [1,S] of ones, position_ids 0..S-1, every past [1,KV,0,D]
//   step:    the chosen id [1,1], the mask one column longer, position = tokens so far - 1,
//            each present.{i}.* fed back as past_key_values.{i}.* (window-sized caches need nothing else:
//            a sliding layer's present is already its last W-1 slots)
// It stops at max-new-tokens or at one of mxport.json's eos_token_ids (not printed). --json prints
// {"prompt_ids": [...], "token_ids": [...], "text": "..."}; otherwise the text.

import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import ort from "onnxruntime-node";
import { Tokenizer } from "@huggingface/tokenizers";

function parseArgs(argv) {
  const args = { folder: null, prompt: null, ids: null, maxNewTokens: 32, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--prompt") args.prompt = argv[++i];
    else if (a === "--ids") args.ids = argv[++i].split(",").map((s) => Number.parseInt(s, 10));
    else if (a === "--max-new-tokens") args.maxNewTokens = Number.parseInt(argv[++i], 10);
    else if (a === "--json") args.json = true;
    else if (!a.startsWith("--") && args.folder === null) args.folder = a;
    else fail(`unknown argument ${a}`);
  }
  if (args.folder === null || (args.prompt === null) === (args.ids === null)) {
    fail("usage: generate.mjs EXPORT_DIR (--prompt TEXT | --ids 1,2,3) [--max-new-tokens N] [--json]");
  }
  if (!(args.maxNewTokens >= 1)) fail(`--max-new-tokens must be >= 1, found ${args.maxNewTokens}`);
  return args;
}

function fail(message) {
  console.error(`generate.mjs: error: ${message}`);
  process.exit(2);
}

function readJson(path) {
  if (!existsSync(path)) fail(`${path}: not found`);
  return JSON.parse(readFileSync(path, "utf8"));
}

function loadTokenizer(folder) {
  const path = join(folder, "tokenizer.json");
  if (!existsSync(path)) return null;
  const configPath = join(folder, "tokenizer_config.json");
  return new Tokenizer(readJson(path), existsSync(configPath) ? readJson(configPath) : {});
}

const int64 = (values, dims) => new ort.Tensor("int64", BigInt64Array.from(values, BigInt), dims);

function argmaxLast(logits) {
  // logits [1, S, V] float32 -> argmax over the last position (first index on ties, like numpy)
  const [, S, V] = logits.dims;
  const data = logits.data;
  let best = 0;
  let bestValue = -Infinity;
  for (let v = 0, o = (S - 1) * V; v < V; v++) {
    if (data[o + v] > bestValue) {
      bestValue = data[o + v];
      best = v;
    }
  }
  return best;
}

// One line instead of ONNX Runtime's node dump when this onnxruntime-node cannot load the export: a --target cpu
// graph's com.microsoft ops may take more inputs than its schemas know, and native ai.mxport kernels are not here.
async function loadSession(folder, meta) {
  try {
    return await ort.InferenceSession.create(join(folder, "model.onnx"));
  } catch (err) {
    const message = String(err?.message ?? err).replace(/\s+/g, " ");
    const at = message.lastIndexOf("with schema");
    const reason = at >= 0 ? message.slice(at) : message.slice(0, 200);
    const version = ort.env?.versions?.common ?? "?";
    fail(`${folder}: onnxruntime-node ${version} cannot load this ${meta.target ?? "?"}-target export ` +
         `(${reason.trim()}); Node runs portable exports: \`mxport export CKPT -o OUT\` (no --target)`);
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const meta = readJson(join(args.folder, "mxport.json"));
  if ((meta.dtype ?? "float32") !== "float32") fail(`this example runs float32 exports; found dtype ${meta.dtype}`);
  const config = meta.config;
  const eos = new Set(meta.eos_token_ids ?? []);
  const tokenizer = loadTokenizer(args.folder);
  let promptIds = args.ids;
  if (promptIds === null) {
    if (tokenizer === null) fail(`${args.folder}: --prompt needs tokenizer.json (or pass --ids)`);
    promptIds = tokenizer.encode(args.prompt, { add_special_tokens: false }).ids;
  }

  const session = await loadSession(args.folder, meta);
  const pastNames = session.inputNames.filter((n) => n.startsWith("past_key_values."));
  const kv = config.num_key_value_heads;
  const headDim = config.head_dim ?? config.hidden_size / config.num_attention_heads;
  let past = Object.fromEntries(
    pastNames.map((n) => [n, new ort.Tensor("float32", new Float32Array(0), [1, kv, 0, headDim])]),
  );

  const tokens = [];
  let ids = promptIds;
  let total = 0; // tokens in the cache after this step's input
  while (tokens.length < args.maxNewTokens) {
    const S = ids.length;
    total += S;
    const feeds = {
      input_ids: int64(ids, [1, S]),
      attention_mask: int64(new Array(total).fill(1), [1, total]),
      ...past,
    };
    if (session.inputNames.includes("position_ids")) {
      feeds.position_ids = int64(Array.from({ length: S }, (_, s) => total - S + s), [1, S]);
    }
    const out = await session.run(feeds);
    const next = argmaxLast(out.logits);
    if (eos.has(next)) break;
    tokens.push(next);
    past = Object.fromEntries(pastNames.map((n) => [n, out[n.replace("past_key_values.", "present.")]]));
    ids = [next];
  }

  const text = tokenizer === null ? "" : tokenizer.decode(tokens, { skip_special_tokens: false });
  if (args.json) console.log(JSON.stringify({ prompt_ids: promptIds, token_ids: tokens, text }));
  else console.log(text);
}

main().catch((err) => fail(err?.message ?? String(err)));
