// Builds the text-embed example into a component:
//
//     npm ci --prefix guest/js
//     node guest/js/examples/text-embed/build.mjs -o text-embed-js.wasm
//
// The component's engine has no Unicode database, so this script writes
// the few properties the tokenizer needs from Node's own (ICU), and the
// model's vocabulary, into modules built in beside the sources.

import { componentize } from '@bytecodealliance/componentize-js';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../../../..');
const args = process.argv.slice(2);
const option = (name, fallback) => {
  const at = args.indexOf(name);
  return at >= 0 && at + 1 < args.length ? args[at + 1] : fallback;
};
const out = resolve(option('-o', 'text-embed-js.wasm'));
const vocabPath = resolve(option('--vocab', join(repo, 'models/minilm-l6/vocab.txt')));
const witPath = resolve(option('--wit', join(repo, 'wit')));

/** Sorted, inclusive [start, end] ranges of the code points `test` holds for. */
function ranges(test) {
  const found = [];
  for (let code = 0; code <= 0x10ffff; code += 1) {
    if (code >= 0xd800 && code <= 0xdfff) continue;
    if (!test(code)) continue;
    const last = found[found.length - 1];
    if (last && last[1] === code - 1) last[1] = code;
    else found.push([code, code]);
  }
  return found;
}

const ASCII_PUNCTUATION = '!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~';
const is = (pattern) => (code) => pattern.test(String.fromCodePoint(code));
const control = ranges(is(/^[\p{Cc}\p{Cf}\p{Co}]$/u));
const marks = ranges(is(/^\p{Mn}$/u));
const punctuation = ranges((code) => ASCII_PUNCTUATION.includes(String.fromCodePoint(code)) || /^\p{P}$/u.test(String.fromCodePoint(code)));
const whitespace = ranges(is(/^\p{White_Space}$/u)).flatMap(([start, end]) => Array.from({ length: end - start + 1 }, (_, i) => start + i));
const decompositions = [];
for (let code = 0; code <= 0x10ffff; code += 1) {
  if ((code >= 0xd800 && code <= 0xdfff) || (code >= 0xac00 && code <= 0xd7a3)) continue;
  const char = String.fromCodePoint(code);
  const decomposed = char.normalize('NFD');
  if (decomposed !== char) decompositions.push([code, Array.from(decomposed, (c) => c.codePointAt(0))]);
}

const unicodeData = `// Written by build.mjs from Node's Unicode ${process.versions.unicode} database.
export const CONTROL = ${JSON.stringify(control)};
export const NONSPACING_MARKS = ${JSON.stringify(marks)};
export const PUNCTUATION = ${JSON.stringify(punctuation)};
export const WHITESPACE = new Set(${JSON.stringify(whitespace)});
export const DECOMPOSITIONS = new Map(${JSON.stringify(decompositions)});
`;
const vocab = await readFile(vocabPath, 'utf8');

// The sources as they sit in the repository, with the generated modules
// beside the app.
const stage = await mkdtemp(join(tmpdir(), 'mantle-text-embed-js-'));
try {
  await cp(join(here, '../../mantle-guest.js'), join(stage, 'mantle-guest.js'));
  const app = join(stage, 'examples/text-embed');
  for (const file of ['app.js', 'wordpiece.js']) await cp(join(here, file), join(app, file));
  await writeFile(join(app, 'unicode-data.js'), unicodeData);
  await writeFile(join(app, 'vocab-data.js'), `export const VOCAB = ${JSON.stringify(vocab)};\n`);
  // componentize-js gives the module the files under the working
  // directory: the stage, so that `../../mantle-guest.js` resolves.
  process.chdir(stage);
  const { component } = await componentize({
    sourcePath: join(app, 'app.js'),
    witPath,
    worldName: 'guest',
    // The guest needs no HTTP of its own: no fetch, no HTTP event.
    disableFeatures: ['http', 'fetch-event'],
  });
  await writeFile(out, component);
  console.log(`wrote ${out} (${component.length} bytes)`);
} finally {
  await rm(stage, { recursive: true, force: true });
}
