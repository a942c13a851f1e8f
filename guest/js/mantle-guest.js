// Write mantle guests in JavaScript: handle one request, run granted
// models through wasi:nn, and answer. Built into a component, with
// StarlingMonkey inside, by componentize-js.
//
//     import * as mg from '../mantle-guest.js';
//
//     function handle(request) {
//       const text = request.text();
//       const outputs = mg.Model.load('my-model').run({ input: new mg.Tensor([1, 1], new Float32Array([text.length])) });
//       return mg.Response.json(Array.from(outputs.get('output').toArray()));
//     }
//
//     export const handler = mg.handler(handle);
//
// componentize-js runs the module's top level once, at build time, and
// every request starts from the memory it left: build tables there.

import { loadByName } from 'wasi:nn/graph@0.2.0-rc-2024-10-28';
import { Tensor as WitTensor } from 'wasi:nn/tensor@0.2.0-rc-2024-10-28';
import * as context from 'mantle:edge/context@0.1.0';

const encoder = new TextEncoder();

/** Why a handler could not answer; the node answers with its status. */
export class GuestError extends Error {
  /** @param {string} tag the WIT case @param {string} message */
  constructor(tag, message) {
    super(message);
    this.tag = tag;
  }
}

/** The request cannot be handled as sent (400). */
export class InvalidInput extends GuestError {
  constructor(message) { super('invalid-input', message); }
}

/** The body is of a kind the handler does not accept (415). */
export class UnsupportedMediaType extends GuestError {
  constructor(message) { super('unsupported-media-type', message); }
}

/** The handler failed for a reason that is not the caller's (500). */
export class Internal extends GuestError {
  constructor(message) { super('internal', message); }
}

/** The caller may not have what it asked for (403). */
export class Forbidden extends GuestError {
  constructor(message) { super('forbidden', message); }
}

/**
 * A wasi:nn call failed. Left unhandled, `security` (a model the module was
 * not granted) answers 403 and any other code 500.
 */
export class InferenceError extends Error {
  /** @param {string} code as the WIT spells it @param {string} message */
  constructor(code, message) {
    super(`${message} (${code})`);
    this.code = code;
  }

  static fromHost(error, doing) {
    const payload = error && error.payload;
    if (payload && typeof payload.code === 'function') {
      return new InferenceError(payload.code(), `${doing}: ${payload.data()}`);
    }
    return new InferenceError('unknown', `${doing}: ${error}`);
  }
}

/** One request: method, path after the route prefix, query, headers, body. */
export class Request {
  constructor(raw) {
    /** @type {string} */ this.method = raw.method;
    /** @type {string} */ this.path = raw.path;
    /** @type {string} */ this.query = raw.query;
    /** @type {Array<[string, Uint8Array]>} */ this.headers = raw.headers;
    /** @type {Uint8Array} */ this.body = raw.body;
  }

  /** The first value of header `name` (case-insensitive), as text. */
  header(name) {
    const wanted = name.toLowerCase();
    const found = this.headers.find(([key]) => key.toLowerCase() === wanted);
    return found === undefined ? undefined : new TextDecoder().decode(found[1]);
  }

  /** The body as UTF-8 text, or InvalidInput. */
  text() {
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(this.body);
    } catch (error) {
      throw new InvalidInput(`the body is not valid UTF-8: ${error.message}`);
    }
  }

  /** The body parsed as JSON, or InvalidInput. */
  json() {
    const text = this.text();
    try {
      return JSON.parse(text);
    } catch (error) {
      throw new InvalidInput(`the body is not valid JSON: ${error.message}`);
    }
  }
}

/** A status, headers (lower-case names) and a body. */
export class Response {
  /** @param {number} status @param {Uint8Array|string} body @param {Array<[string, Uint8Array]>} headers */
  constructor(status = 200, body = new Uint8Array(), headers = []) {
    this.status = status;
    this.body = typeof body === 'string' ? encoder.encode(body) : body;
    this.headers = headers;
  }

  /** `value` as JSON, with its content type. */
  static json(value, status = 200) {
    return new Response(status, JSON.stringify(value)).withHeader('content-type', 'application/json');
  }

  /** `text` as UTF-8 plain text. */
  static text(text, status = 200) {
    return new Response(status, text).withHeader('content-type', 'text/plain; charset=utf-8');
  }

  /** Adds a header, and returns the response. */
  withHeader(name, value) {
    this.headers.push([name.toLowerCase(), typeof value === 'string' ? encoder.encode(value) : value]);
    return this;
  }
}

// The element type of a typed array, and back, as the WIT spells it.
const TYPES = [
  [Float32Array, 'FP32'],
  [Float64Array, 'FP64'],
  [Uint8Array, 'U8'],
  [Int32Array, 'I32'],
  [BigInt64Array, 'I64'],
];

/** A tensor: its shape, element type and little-endian bytes. */
export class Tensor {
  /**
   * @param {number[]} shape
   * @param {Float32Array|Float64Array|Uint8Array|Int32Array|BigInt64Array} data its type is the tensor's
   */
  constructor(shape, data) {
    const type = TYPES.find(([kind]) => data instanceof kind);
    if (type === undefined) {
      throw new TypeError('tensor data is a Float32Array, Float64Array, Uint8Array, Int32Array or BigInt64Array');
    }
    const count = shape.reduce((a, b) => a * b, 1);
    if (count !== data.length) {
      throw new RangeError(`shape [${shape}] holds ${count} elements, and the data has ${data.length}`);
    }
    this.shape = Array.from(shape);
    this.dtype = type[1];
    this.bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }

  /** The elements as a typed array of the tensor's type. */
  toArray() {
    const type = TYPES.find(([, name]) => name === this.dtype);
    if (type === undefined) throw new TypeError(`${this.dtype} has no typed array: read .bytes`);
    const copy = this.bytes.slice();
    return new type[0](copy.buffer, 0, copy.byteLength / type[0].BYTES_PER_ELEMENT);
  }

  static fromHost(value) {
    const made = Object.create(Tensor.prototype);
    made.shape = Array.from(value.dimensions());
    made.dtype = value.ty();
    made.bytes = value.data();
    return made;
  }
}

/** The named outputs of one run. */
export class Outputs {
  constructor(model, pairs) {
    this.model = model;
    this.tensors = new Map(pairs);
  }

  /** The output called `name`. */
  get(name) {
    const found = this.tensors.get(name);
    if (found === undefined) {
      throw new InferenceError('invalid-argument', `model \`${this.model}\` has no output \`${name}\` (it has ${[...this.tensors.keys()]})`);
    }
    return found;
  }
}

/** A model this module was granted, loaded by name. */
export class Model {
  constructor(name, graph) {
    this.name = name;
    this.graph = graph;
  }

  /** Loads the granted model `name` (or `name@version`). */
  static load(name) {
    try {
      return new Model(name, loadByName(name));
    } catch (error) {
      throw InferenceError.fromHost(error, `loading model \`${name}\``);
    }
  }

  /** Runs the model once on named inputs: an object or a Map of Tensors. */
  run(inputs) {
    const pairs = inputs instanceof Map ? [...inputs] : Object.entries(inputs);
    let outputs;
    try {
      const execution = this.graph.initExecutionContext();
      outputs = execution.compute(pairs.map(([name, t]) => [name, new WitTensor(t.shape, t.dtype, t.bytes)]));
    } catch (error) {
      throw InferenceError.fromHost(error, `running \`${this.name}\``);
    }
    return new Outputs(this.name, outputs.map(([name, t]) => [name, Tensor.fromHost(t)]));
  }
}

/** A configuration value the operator set for this module. */
export const config = (key) => context.configGet(key);
/** The tenant this request is charged to. */
export const tenantId = () => context.tenantId();
/** The module being run, as the operator named it. */
export const moduleId = () => context.moduleId();
/** The unique id of this request, as in the node's log. */
export const requestId = () => context.requestId();
/** Writes one line to the node's log: level is trace, debug, info, warn or error. */
export const log = (level, message) => context.log(level, message);

function answer(value) {
  if (value instanceof Response) return value;
  if (value instanceof Uint8Array) return new Response(200, value).withHeader('content-type', 'application/octet-stream');
  if (typeof value === 'string') return Response.text(value);
  return Response.json(value);
}

/**
 * The export componentize-js serves, calling `handle` for each request:
 * `export const handler = mg.handler(handle);`. A GuestError answers with
 * its status; an InferenceError with 403 (`security`) or 500; any other
 * exception with 500, its stack going to the node's log.
 *
 * @param {(request: Request) => Response|object|string|Uint8Array} handle
 */
export function handler(handle) {
  return {
    handle(raw) {
      try {
        const response = answer(handle(new Request(raw)));
        return { status: response.status, headers: response.headers, body: response.body };
      } catch (error) {
        if (error instanceof GuestError) throw { tag: error.tag, val: error.message };
        if (error instanceof InferenceError) {
          throw { tag: error.code === 'security' ? 'forbidden' : 'internal', val: error.message };
        }
        context.log('error', `${error && error.stack ? error.stack : error}`);
        const name = error && error.name ? error.name : 'Error';
        throw { tag: 'internal', val: `${name}: ${error && error.message !== undefined ? error.message : error}` };
      }
    },
  };
}
