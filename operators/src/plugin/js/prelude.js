// pluginflow plugin prelude: evaluated once in every plugin context, before the plugin's code.
//
// It builds what PostHog's VM gave a plugin: the globals (console, fetch, RetryError, Buffer,
// URL, TextEncoder, posthog), the allow-listed modules, the `meta` object, and the small
// machinery the Rust host drives (module definitions, export discovery, hook calls).
// Everything that touches the outside world goes through `host`, a native object the Rust side
// passes to this function. The function returns `pf`, the host's handle on this context. Both
// live only in this closure and in the host: plugin code can reach neither. Events are read
// back by the host as data (never through code here), so nothing a plugin does to its own
// realm changes what the host sees.
(function (host) {
    'use strict'
    const G = globalThis

    // ---- no code from strings -----------------------------------------------------------
    // QuickJS's compiler does not survive running out of memory halfway (it can write past a
    // buffer), and a plugin could make it run out at will. So plugins compile no code at run
    // time: `eval` and every Function constructor throw. `typeof`, `instanceof Function` and
    // `fn.constructor === Function` keep working.
    const noCodeFromStrings = function Function() {
        throw new EvalError('Code generation from strings is disabled in pluginflow plugins (eval, new Function)')
    }
    noCodeFromStrings.prototype = Function.prototype
    for (const proto of [Function.prototype, Object.getPrototypeOf(async function () {}), Object.getPrototypeOf(function* () {}), Object.getPrototypeOf(async function* () {})]) {
        Object.defineProperty(proto, 'constructor', { value: noCodeFromStrings, writable: false, configurable: false, enumerable: false })
    }
    for (const name of ['Function', 'eval']) {
        Object.defineProperty(G, name, { value: noCodeFromStrings, writable: false, configurable: false, enumerable: false })
    }

    // ---- errors -------------------------------------------------------------------------
    class RetryError extends Error {
        constructor(message) {
            super(message)
            this.name = 'RetryError'
        }
        toString() {
            const attempt = this._attempt && this._maxAttempts ? ` (attempt ${this._attempt}/${this._maxAttempts})` : ''
            return this.message ? `${this.name}${attempt}: ${this.message}` : `${this.name}${attempt}`
        }
    }
    class TimeoutError extends RetryError {
        constructor(message, caller) {
            super(message)
            this.name = 'TimeoutError'
            this.caller = caller
        }
    }
    class IllegalOperationError extends Error {
        constructor(message) {
            super(message)
            this.name = 'IllegalOperationError'
        }
    }
    class FetchError extends Error {
        constructor(message, type) {
            super(message)
            this.name = 'FetchError'
            this.type = type || 'system'
        }
    }

    const promised = (fn) => function () {
        try {
            return Promise.resolve(fn.apply(this, arguments))
        } catch (e) {
            return Promise.reject(e)
        }
    }

    // ---- console ------------------------------------------------------------------------
    function formatArg(arg) {
        if (Array.isArray(arg)) return JSON.stringify(arg)
        let text
        try {
            text = String(arg)
        } catch (e) {
            text = '[object Object]'
        }
        if (text === '[object Object]') {
            try {
                const json = JSON.stringify(arg)
                if (json !== undefined) text = json
            } catch (e) {
                // keep '[object Object]' for cyclic objects
            }
        }
        return text
    }
    // Text handed to the host as UTF-8 has its lone surrogates replaced by U+FFFD, as Node does
    // when it writes or encodes a string (a string cut in the middle of an emoji is common).
    const wellFormed = (text) => String.prototype.toWellFormed.call(text)
    // A USVString, as the URL and Encoding Standards take their arguments.
    const usv = (value) => wellFormed(String(value))
    const console = {}
    for (const level of ['log', 'info', 'warn', 'error', 'debug']) {
        console[level] = function () {
            host.log(level.toUpperCase(), wellFormed(Array.prototype.map.call(arguments, formatArg).join(' ')))
            return Promise.resolve()
        }
    }

    // ---- bytes: Buffer, TextEncoder, TextDecoder ----------------------------------------
    class Buffer extends Uint8Array {
        static from(value, encodingOrOffset, length) {
            if (typeof value === 'string') return Buffer._wrap(host.encode(value, encodingOrOffset || 'utf8'))
            if (value instanceof ArrayBuffer) {
                const offset = encodingOrOffset || 0
                return new Buffer(value, offset, length === undefined ? value.byteLength - offset : length)
            }
            if (ArrayBuffer.isView(value) || Array.isArray(value)) {
                const out = new Buffer(value.length)
                for (let i = 0; i < value.length; i++) out[i] = value[i] & 255
                return out
            }
            if (value && value.type === 'Buffer' && Array.isArray(value.data)) return Buffer.from(value.data)
            throw new TypeError('The first argument must be a string, Buffer, ArrayBuffer, Array, or array-like object')
        }
        static _wrap(bytes) {
            return new Buffer(bytes.buffer, bytes.byteOffset, bytes.length)
        }
        static alloc(size, fill) {
            const out = new Buffer(size)
            if (fill !== undefined) out.fill(typeof fill === 'number' ? fill : Buffer.from(String(fill))[0])
            return out
        }
        static allocUnsafe(size) {
            return new Buffer(size)
        }
        static isBuffer(value) {
            return value instanceof Buffer
        }
        static byteLength(value, encoding) {
            return typeof value === 'string' ? host.encode(value, encoding || 'utf8').length : value.byteLength
        }
        static concat(list, totalLength) {
            const total = totalLength === undefined ? list.reduce((n, b) => n + b.length, 0) : totalLength
            const out = new Buffer(total)
            let offset = 0
            for (const part of list) {
                if (offset >= total) break
                out.set(part.subarray(0, total - offset), offset)
                offset += part.length
            }
            return out
        }
        toString(encoding, start, end) {
            return host.decode(this.subarray(start || 0, end === undefined ? this.length : end), encoding || 'utf8')
        }
        toJSON() {
            return { type: 'Buffer', data: Array.from(this) }
        }
        equals(other) {
            if (this.length !== other.length) return false
            for (let i = 0; i < this.length; i++) if (this[i] !== other[i]) return false
            return true
        }
        slice(start, end) {
            return this.subarray(start, end)
        }
        indexOf(value, byteOffset, encoding) {
            return bufferIndexOf(this, value, byteOffset, encoding)
        }
        includes(value, byteOffset, encoding) {
            return bufferIndexOf(this, value, byteOffset, encoding) !== -1
        }
        compare(other) {
            return Buffer.compare(this, other)
        }
        static compare(a, b) {
            if (!(a instanceof Uint8Array) || !(b instanceof Uint8Array)) throw new TypeError('The "buf1" and "buf2" arguments must be one of type Buffer or Uint8Array')
            const n = Math.min(a.length, b.length)
            for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1
            return a.length < b.length ? -1 : a.length > b.length ? 1 : 0
        }
        write(string, offset, length, encoding) {
            const bytes = host.encode(string, encoding || 'utf8')
            const at = offset || 0
            const count = Math.min(bytes.length, length === undefined ? this.length - at : length, this.length - at)
            this.set(bytes.subarray(0, count), at)
            return count
        }
    }
    function bufferIndexOf(buf, value, byteOffset, encoding) {
        const needle = typeof value === 'number' ? [value & 255] : typeof value === 'string' ? host.encode(value, encoding || 'utf8') : value
        let start = byteOffset === undefined ? 0 : Math.trunc(Number(byteOffset)) || 0
        if (start < 0) start = Math.max(0, buf.length + start)
        if (needle.length === 0) return Math.min(start, buf.length)
        outer: for (let i = start; i + needle.length <= buf.length; i++) {
            for (let j = 0; j < needle.length; j++) if (buf[i + j] !== needle[j]) continue outer
            return i
        }
        return -1
    }
    // Buffer's fixed-width readers and writers, over a DataView of the same bytes.
    const NUMERIC = [['UInt8', 1, 'Uint8'], ['Int8', 1, 'Int8'], ['UInt16', 2, 'Uint16'], ['Int16', 2, 'Int16'], ['UInt32', 4, 'Uint32'], ['Int32', 4, 'Int32'], ['Float', 4, 'Float32'], ['Double', 8, 'Float64'], ['BigUInt64', 8, 'BigUint64'], ['BigInt64', 8, 'BigInt64']]
    const viewOf = (buf) => new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
    const checkOffset = (buf, offset, size) => {
        const at = offset === undefined ? 0 : offset
        if (typeof at !== 'number' || !Number.isInteger(at) || at < 0 || at + size > buf.length) {
            const e = new RangeError(`The value of "offset" is out of range. It must be >= 0 and <= ${buf.length - size}. Received ${at}`)
            e.code = 'ERR_OUT_OF_RANGE'
            throw e
        }
        return at
    }
    for (const [name, size, view] of NUMERIC) {
        const ends = size === 1 ? [['', false]] : [['LE', true], ['BE', false]]
        for (const [suffix, little] of ends) {
            const define = (method, fn) => Object.defineProperty(Buffer.prototype, method, { value: fn, writable: true, configurable: true, enumerable: false })
            define('read' + name + suffix, function (offset) {
                return viewOf(this)['get' + view](checkOffset(this, offset, size), little)
            })
            define('write' + name + suffix, function (value, offset) {
                const at = checkOffset(this, offset, size)
                viewOf(this)['set' + view](at, value, little)
                return at + size
            })
            if (name.startsWith('UInt')) {
                define('readUint' + name.slice(4) + suffix, Buffer.prototype['read' + name + suffix])
                define('writeUint' + name.slice(4) + suffix, Buffer.prototype['write' + name + suffix])
            }
        }
    }

    // ---- structuredClone, AbortController, Web Crypto's getRandomValues -----------------
    class DOMException extends Error {
        constructor(message, name) {
            super(message)
            Object.defineProperty(this, 'name', { value: name === undefined ? 'Error' : String(name), writable: true, configurable: true })
        }
    }
    function structuredClone(value) {
        const seen = new Map()
        const uncloneable = (what) => new DOMException(`${what} could not be cloned.`, 'DataCloneError')
        const clone = (v) => {
            if (typeof v === 'function') throw uncloneable(String(v))
            if (typeof v === 'symbol') throw uncloneable('Symbol()')
            if (v === null || typeof v !== 'object') return v
            if (seen.has(v)) return seen.get(v)
            if (v instanceof Promise || v instanceof WeakMap || v instanceof WeakSet) throw uncloneable(`#<${Object.prototype.toString.call(v).slice(8, -1)}>`)
            let out
            if (Array.isArray(v)) out = new Array(v.length)
            else if (v instanceof Map) out = new Map()
            else if (v instanceof Set) out = new Set()
            else if (v instanceof Date) out = new Date(v.getTime())
            else if (v instanceof RegExp) out = new RegExp(v.source, v.flags)
            else if (v instanceof ArrayBuffer) out = v.slice(0)
            else if (v instanceof DataView) out = new DataView(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength))
            else if (ArrayBuffer.isView(v)) out = v instanceof Buffer ? new Uint8Array(v) : new v.constructor(v)
            else if (v instanceof Error) {
                out = new Error(v.message)
                out.name = v.name
                if (v.stack !== undefined) out.stack = v.stack
            } else out = {}
            // Recorded before the contents, so cycles come back as cycles.
            seen.set(v, out)
            if (out instanceof Map) for (const [k, x] of v) out.set(clone(k), clone(x))
            else if (out instanceof Set) for (const x of v) out.add(clone(x))
            else if (Array.isArray(out) || Object.getPrototypeOf(out) === Object.prototype) for (const k of Object.keys(v)) out[k] = clone(v[k])
            return out
        }
        return clone(value)
    }
    let fireAbort
    class AbortSignal {
        #listeners = []
        constructor() {
            this.aborted = false
            this.reason = undefined
            this.onabort = null
        }
        static abort(reason) {
            const controller = new AbortController()
            controller.abort(reason)
            return controller.signal
        }
        static {
            fireAbort = (signal, reason) => {
                if (signal.aborted) return
                signal.aborted = true
                signal.reason = reason === undefined ? new DOMException('This operation was aborted', 'AbortError') : reason
                const event = { type: 'abort', target: signal }
                if (typeof signal.onabort === 'function') signal.onabort(event)
                for (const fn of signal.#listeners.slice()) fn.call(signal, event)
            }
        }
        addEventListener(type, fn) {
            if (type === 'abort' && typeof fn === 'function') this.#listeners.push(fn)
        }
        removeEventListener(type, fn) {
            if (type === 'abort') this.#listeners = this.#listeners.filter((x) => x !== fn)
        }
        throwIfAborted() {
            if (this.aborted) throw this.reason
        }
    }
    class AbortController {
        #signal = new AbortSignal()
        get signal() {
            return this.#signal
        }
        abort(reason) {
            fireAbort(this.#signal, reason)
        }
    }
    const webCrypto = {
        randomUUID: () => host.randomUUID(),
        getRandomValues(array) {
            if (!ArrayBuffer.isView(array) || array instanceof Float32Array || array instanceof Float64Array || array instanceof DataView) {
                throw new TypeError('The data argument must be an integer-type TypedArray')
            }
            if (array.byteLength > 65536) throw new DOMException(`The ArrayBufferView's byte length (${array.byteLength}) exceeds the number of bytes of entropy available via this API (65536)`, 'QuotaExceededError')
            new Uint8Array(array.buffer, array.byteOffset, array.byteLength).set(host.randomBytes(array.byteLength))
            return array
        },
    }

    class TextEncoder {
        get encoding() {
            return 'utf-8'
        }
        encode(text) {
            return host.encode(text === undefined ? '' : usv(text), 'utf8')
        }
    }
    // How many bytes at the end of `view` begin a UTF-8 sequence that more bytes could still
    // complete (held back by a streaming decode); 0 when the end is complete or already invalid.
    // Second-byte ranges as the Encoding Standard's decoder has them.
    const incompleteTail = (view) => {
        for (let k = 1; k <= Math.min(3, view.length); k++) {
            const lead = view[view.length - k]
            if ((lead & 0xc0) === 0x80) continue
            const need = lead >= 0xc2 && lead <= 0xdf ? 2 : lead >= 0xe0 && lead <= 0xef ? 3 : lead >= 0xf0 && lead <= 0xf4 ? 4 : 0
            if (need <= k) return 0
            if (k >= 2) {
                const second = view[view.length - k + 1]
                const [low, high] = lead === 0xe0 ? [0xa0, 0xbf] : lead === 0xed ? [0x80, 0x9f] : lead === 0xf0 ? [0x90, 0xbf] : lead === 0xf4 ? [0x80, 0x8f] : [0x80, 0xbf]
                if (second < low || second > high) return 0
            }
            return k
        }
        return 0
    }
    const EMPTY_BYTES = new Uint8Array(0)
    class TextDecoder {
        #ignoreBOM
        #fatal
        // A streaming decode's incomplete last sequence, and whether its stream began already
        // (a byte order mark is dropped only at the start of one).
        #pending = EMPTY_BYTES
        #begun = false
        constructor(label, options) {
            const name = (label || 'utf-8').toLowerCase()
            if (name !== 'utf-8' && name !== 'utf8') throw new RangeError(`TextDecoder: unsupported encoding '${label}'`)
            this.#ignoreBOM = Boolean(options && options.ignoreBOM)
            this.#fatal = Boolean(options && options.fatal)
        }
        get encoding() {
            return 'utf-8'
        }
        get fatal() {
            return this.#fatal
        }
        get ignoreBOM() {
            return this.#ignoreBOM
        }
        decode(bytes, options) {
            const stream = Boolean(options && options.stream)
            let view =
                bytes === undefined ? EMPTY_BYTES : bytes instanceof ArrayBuffer ? new Uint8Array(bytes) : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength)
            if (this.#pending.length) {
                const joined = new Uint8Array(this.#pending.length + view.length)
                joined.set(this.#pending)
                joined.set(view, this.#pending.length)
                view = joined
            }
            const end = stream ? view.length - incompleteTail(view) : view.length
            this.#pending = stream ? view.slice(end) : EMPTY_BYTES
            view = view.subarray(0, end)
            // A leading byte order mark is not text (the Encoding Standard, and Node).
            if (!this.#begun && view.length) {
                if (!this.#ignoreBOM && view.length >= 3 && view[0] === 0xef && view[1] === 0xbb && view[2] === 0xbf) view = view.subarray(3)
                this.#begun = true
            }
            if (!stream) this.#begun = false
            if (!this.#fatal) return host.decode(view, 'utf8')
            const text = host.decodeFatal(view)
            if (typeof text === 'string') return text
            this.#pending = EMPTY_BYTES
            this.#begun = false
            const e = new TypeError('The encoded data was not valid for encoding utf-8')
            e.code = 'ERR_ENCODING_INVALID_ENCODED_DATA'
            throw e
        }
    }

    // ---- URL and URLSearchParams --------------------------------------------------------
    // The WHATWG URL Standard, as Node has it. Parsing, serialising and every setter are the
    // `url` crate's (host.url*); the state lives in private fields, so a URL has no own
    // properties (Object.keys is empty, JSON.stringify gives its href through toJSON).
    const invalidUrl = (input) => {
        const e = new TypeError('Invalid URL')
        e.code = 'ERR_INVALID_URL'
        e.input = input
        return e
    }
    const pairTuple = () => new TypeError('Each query pair must be an iterable [name, value] tuple')
    // Reach into the other class's private state; set by the static blocks, never exported.
    let bindParams, reparseParams, searchFromParams, urlPart, setUrlPart
    class URLSearchParams {
        #list = []
        #url = null
        constructor(init) {
            if (init === undefined || init === null) return
            if (typeof init === 'object' || typeof init === 'function') {
                if (typeof init[Symbol.iterator] === 'function') {
                    for (const pair of init) {
                        if (pair === null || (typeof pair !== 'object' && typeof pair !== 'function') || typeof pair[Symbol.iterator] !== 'function') throw pairTuple()
                        const items = Array.from(pair)
                        if (items.length !== 2) throw pairTuple()
                        this.#list.push([usv(items[0]), usv(items[1])])
                    }
                } else {
                    for (const key of Reflect.ownKeys(init)) {
                        if (typeof key !== 'string') continue
                        const desc = Reflect.getOwnPropertyDescriptor(init, key)
                        if (desc && desc.enumerable) this.#list.push([key, usv(init[key])])
                    }
                }
                return
            }
            const text = usv(init)
            this.#parse(text.startsWith('?') ? text.slice(1) : text)
        }
        #parse(query) {
            this.#list = []
            const flat = host.formParse(query)
            for (let i = 0; i < flat.length; i += 2) this.#list.push([flat[i], flat[i + 1]])
        }
        #changed() {
            if (this.#url) searchFromParams(this.#url, this.toString())
        }
        static {
            bindParams = (params, url, query) => {
                params.#url = url
                params.#parse(query)
            }
            reparseParams = (params, query) => params.#parse(query)
        }
        get size() {
            return this.#list.length
        }
        append(name, value) {
            if (arguments.length < 2) throw new TypeError('The "name" and "value" arguments must be specified')
            this.#list.push([usv(name), usv(value)])
            this.#changed()
        }
        delete(name, value) {
            if (arguments.length < 1) throw new TypeError('The "name" argument must be specified')
            const k = usv(name)
            const v = value === undefined ? undefined : usv(value)
            this.#list = this.#list.filter((p) => p[0] !== k || (v !== undefined && p[1] !== v))
            this.#changed()
        }
        get(name) {
            if (arguments.length < 1) throw new TypeError('The "name" argument must be specified')
            const k = usv(name)
            const found = this.#list.find((p) => p[0] === k)
            return found ? found[1] : null
        }
        getAll(name) {
            if (arguments.length < 1) throw new TypeError('The "name" argument must be specified')
            const k = usv(name)
            return this.#list.filter((p) => p[0] === k).map((p) => p[1])
        }
        has(name, value) {
            if (arguments.length < 1) throw new TypeError('The "name" argument must be specified')
            const k = usv(name)
            const v = value === undefined ? undefined : usv(value)
            return this.#list.some((p) => p[0] === k && (v === undefined || p[1] === v))
        }
        set(name, value) {
            if (arguments.length < 2) throw new TypeError('The "name" and "value" arguments must be specified')
            const k = usv(name)
            const index = this.#list.findIndex((p) => p[0] === k)
            if (index < 0) {
                this.#list.push([k, usv(value)])
            } else {
                this.#list[index][1] = usv(value)
                this.#list = this.#list.filter((p, i) => i <= index || p[0] !== k)
            }
            this.#changed()
        }
        sort() {
            // Stable, by UTF-16 code units of the names, as the standard says.
            this.#list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
            this.#changed()
        }
        forEach(callback, thisArg) {
            if (typeof callback !== 'function') throw new TypeError('The "callback" argument must be of type function')
            for (let i = 0; i < this.#list.length; i++) callback.call(thisArg, this.#list[i][1], this.#list[i][0], this)
        }
        *entries() {
            for (let i = 0; i < this.#list.length; i++) yield [this.#list[i][0], this.#list[i][1]]
        }
        *keys() {
            for (let i = 0; i < this.#list.length; i++) yield this.#list[i][0]
        }
        *values() {
            for (let i = 0; i < this.#list.length; i++) yield this.#list[i][1]
        }
        [Symbol.iterator]() {
            return this.entries()
        }
        get [Symbol.toStringTag]() {
            return 'URLSearchParams'
        }
        toString() {
            const flat = []
            for (const [k, v] of this.#list) flat.push(k, v)
            return host.formSerialize(flat)
        }
    }

    const URL_PARTS = ['href', 'protocol', 'username', 'password', 'host', 'hostname', 'port', 'pathname', 'search', 'hash', 'origin']
    class URL {
        #parts = null
        #params = null
        constructor(input, base) {
            if (arguments.length < 1) throw new TypeError('The "url" argument must be specified')
            const text = usv(input)
            const parts = base === undefined ? host.urlParse(text) : host.urlParse(text, usv(base))
            if (parts == null) throw invalidUrl(text)
            this.#parts = parts
            this.#params = new URLSearchParams()
            bindParams(this.#params, this, parts[8].slice(1))
        }
        static canParse(input, base) {
            if (arguments.length < 1) throw new TypeError('The "url" argument must be specified')
            return (base === undefined ? host.urlParse(usv(input)) : host.urlParse(usv(input), usv(base))) != null
        }
        static parse(input, base) {
            try {
                return base === undefined ? new URL(input) : new URL(input, base)
            } catch (e) {
                return null
            }
        }
        get searchParams() {
            return this.#params
        }
        get [Symbol.toStringTag]() {
            return 'URL'
        }
        toString() {
            return this.#parts[0]
        }
        toJSON() {
            return this.#parts[0]
        }
        static {
            searchFromParams = (url, query) => (url.#parts = host.urlSet(url.#parts[0], 'query', query))
            urlPart = (url, index) => url.#parts[index]
            setUrlPart = (url, part, value) => {
                const parts = host.urlSet(url.#parts[0], part, usv(value))
                if (parts == null) throw invalidUrl(usv(value))
                url.#parts = parts
                if (part === 'search' || part === 'href') reparseParams(url.#params, parts[8].slice(1))
            }
        }
    }
    URL_PARTS.forEach((name, index) => {
        const desc = {
            get() {
                return urlPart(this, index)
            },
            enumerable: true,
            configurable: true,
        }
        if (name !== 'origin') {
            desc.set = function (value) {
                setUrlPart(this, name, value)
            }
        }
        Object.defineProperty(URL.prototype, name, desc)
    })

    // ---- Intl ---------------------------------------------------------------------------
    // ECMA-402 on ICU4X lives in js/intl.js, compiled into this context by the host the first
    // time the plugin reads `Intl` or calls a locale-sensitive method (most plugins never do,
    // and its code would otherwise sit in every instance's heap).
    let intlModule = null
    const intrinsics = { getTime: Date.prototype.getTime, numberValue: Number.prototype.valueOf, bigintValue: BigInt.prototype.valueOf }
    const intl = () => intlModule || (intlModule = host.loadIntl()(host, intrinsics))
    const replaceMethod = (proto, name, fn) => Object.defineProperty(proto, name, { value: fn, writable: true, configurable: true, enumerable: false })
    const lazyMethod = (proto, name, key) =>
        replaceMethod(proto, name, {
            [name](a, b, c) {
                return intl()[key].call(this, a, b, c)
            },
        }[name])
    lazyMethod(Date.prototype, 'toLocaleString', 'toLocaleString')
    lazyMethod(Date.prototype, 'toLocaleDateString', 'toLocaleDateString')
    lazyMethod(Date.prototype, 'toLocaleTimeString', 'toLocaleTimeString')
    lazyMethod(Number.prototype, 'toLocaleString', 'numberToLocaleString')
    lazyMethod(BigInt.prototype, 'toLocaleString', 'bigintToLocaleString')
    lazyMethod(String.prototype, 'localeCompare', 'localeCompare')
    lazyMethod(String.prototype, 'toLocaleUpperCase', 'toLocaleUpperCase')
    lazyMethod(String.prototype, 'toLocaleLowerCase', 'toLocaleLowerCase')
    const thisTime = Date.prototype.getTime
    // V8 ends Date#toString and #toTimeString with the zone's long name: "(Eastern Standard Time)".
    for (const name of ['toString', 'toTimeString']) {
        const plain = Date.prototype[name]
        replaceMethod(Date.prototype, name, function () {
            const text = plain.call(this)
            const zone = host.intlZoneName(thisTime.call(this))
            return zone == null ? text : `${text} (${zone})`
        })
    }
    // ---- fetch ----------------------------------------------------------------------------
    class Headers {
        constructor(init) {
            this._map = new Map()
            if (!init) return
            const pairs = init instanceof Headers ? init.entries() : typeof init[Symbol.iterator] === 'function' ? init : Object.entries(init)
            for (const [k, v] of pairs) this.append(k, v)
        }
        append(key, value) {
            const k = String(key).toLowerCase()
            const prev = this._map.get(k)
            this._map.set(k, prev === undefined ? String(value) : prev + ', ' + String(value))
        }
        set(key, value) {
            this._map.set(String(key).toLowerCase(), String(value))
        }
        get(key) {
            const v = this._map.get(String(key).toLowerCase())
            return v === undefined ? null : v
        }
        has(key) {
            return this._map.has(String(key).toLowerCase())
        }
        delete(key) {
            this._map.delete(String(key).toLowerCase())
        }
        forEach(callback, thisArg) {
            for (const [k, v] of this._map) callback.call(thisArg, v, k, this)
        }
        entries() {
            return this._map.entries()
        }
        keys() {
            return this._map.keys()
        }
        values() {
            return this._map.values()
        }
        raw() {
            const out = {}
            for (const [k, v] of this._map) out[k] = [v]
            return out
        }
        [Symbol.iterator]() {
            return this._map.entries()
        }
    }
    class Response {
        constructor(body, init) {
            const options = init || {}
            this._body = body instanceof Uint8Array ? body : host.encode(body === undefined || body === null ? '' : String(body), 'utf8')
            this.status = options.status === undefined ? 200 : options.status
            this.statusText = options.statusText || ''
            this.headers = new Headers(options.headers)
            this.url = options.url || ''
            this.bodyUsed = false
        }
        get ok() {
            return this.status >= 200 && this.status < 300
        }
        _consume() {
            if (this.bodyUsed) return Promise.reject(new TypeError(`body used already for: ${this.url}`))
            this.bodyUsed = true
            return Promise.resolve(this._body)
        }
        text() {
            return this._consume().then((b) => host.decode(b, 'utf8'))
        }
        json() {
            return this.text().then((t) => JSON.parse(t))
        }
        arrayBuffer() {
            return this._consume().then((b) => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength))
        }
        buffer() {
            return this._consume().then((b) => Buffer.from(b))
        }
    }
    function fetch(input, init) {
        try {
            const options = init || {}
            const url = typeof input === 'string' ? input : input && input.href ? input.href : input && input.url ? input.url : String(input)
            const headers = new Headers(options.headers)
            let body = options.body
            if (body instanceof URLSearchParams) {
                if (!headers.has('content-type')) headers.set('content-type', 'application/x-www-form-urlencoded;charset=UTF-8')
                body = body.toString()
            } else if (body instanceof ArrayBuffer) {
                body = new Uint8Array(body)
            } else if (body !== undefined && body !== null && !ArrayBuffer.isView(body)) {
                body = String(body)
                if (!headers.has('content-type')) headers.set('content-type', 'text/plain;charset=UTF-8')
            }
            const method = String(options.method || 'GET').toUpperCase()
            const reply = host.fetch(url, method, JSON.stringify(Array.from(headers.entries())), body === undefined ? null : body, Number(options.timeout) || 0)
            if (typeof reply === 'string') return Promise.reject(new FetchError(`request to ${url} failed, reason: ${reply}`, 'system'))
            return Promise.resolve(new Response(reply.body, { status: reply.status, statusText: reply.statusText, headers: reply.headers, url: reply.url }))
        } catch (e) {
            return Promise.reject(e)
        }
    }
    fetch.default = fetch
    fetch.Headers = Headers
    fetch.Response = Response
    fetch.FetchError = FetchError

    // ---- timers are not available -------------------------------------------------------
    const noTimers = (name) =>
        function () {
            throw new Error(`${name} is not available in plugins: use jobs (meta.jobs.NAME(payload).runIn(...)) or scheduled tasks (runEveryMinute) instead`)
        }

    // ---- modules ------------------------------------------------------------------------
    function bytesOf(data, encoding) {
        if (typeof data === 'string') return host.encode(data, encoding || 'utf8')
        if (data instanceof ArrayBuffer) return new Uint8Array(data)
        if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
        throw new TypeError('The "data" argument must be of type string or an instance of Buffer, TypedArray, or DataView')
    }
    function digestOutput(bytes, encoding) {
        return encoding ? host.decode(bytes, encoding) : Buffer._wrap(bytes)
    }
    function hasher(algorithm, key) {
        const alg = String(algorithm).toLowerCase()
        if (!['md5', 'sha1', 'sha256', 'sha512'].includes(alg)) throw new Error(`Digest method not supported: ${algorithm}`)
        const parts = []
        let done = false
        return {
            update(data, encoding) {
                if (done) throw new Error('Digest already called')
                parts.push(Buffer.from(bytesOf(data, encoding)))
                return this
            },
            digest(encoding) {
                if (done) throw new Error('Digest already called')
                done = true
                return digestOutput(host.hash(alg, Buffer.concat(parts), key === undefined ? null : key), encoding)
            },
        }
    }
    const crypto = {
        createHash: (algorithm) => hasher(algorithm),
        createHmac: (algorithm, key) => hasher(algorithm, bytesOf(key)),
        randomUUID: () => host.randomUUID(),
        randomBytes(size, callback) {
            const bytes = Buffer._wrap(host.randomBytes(size))
            if (typeof callback === 'function') {
                Promise.resolve().then(() => callback(null, bytes))
                return undefined
            }
            return bytes
        },
        timingSafeEqual(a, b) {
            if (a.length !== b.length) throw new RangeError('Input buffers must have the same byte length')
            let diff = 0
            for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i]
            return diff === 0
        },
    }
    const zlib = {}
    for (const op of ['gzip', 'gunzip', 'deflate', 'inflate', 'deflateRaw', 'inflateRaw']) {
        const sync = (data) => Buffer._wrap(host.zlib(op, bytesOf(data)))
        zlib[op + 'Sync'] = sync
        zlib[op] = function (data, options, callback) {
            const cb = typeof options === 'function' ? options : callback
            let result
            let error = null
            try {
                result = sync(data)
            } catch (e) {
                error = e
            }
            Promise.resolve().then(() => cb(error, result))
        }
    }
    const urlModule = {
        URL,
        URLSearchParams,
        parse(text) {
            const u = new URL(text)
            return {
                href: u.href, protocol: u.protocol, auth: u.username ? u.username + (u.password ? ':' + u.password : '') : null,
                host: u.host, hostname: u.hostname, port: u.port || null, pathname: u.pathname, search: u.search || null,
                query: u.search ? u.search.slice(1) : null, hash: u.hash || null, path: u.pathname + u.search, slashes: true,
            }
        },
        format(u) {
            return u instanceof URL ? u.href : typeof u === 'string' ? u : String(u.href || '')
        },
    }
    function createBuffer(options) {
        const limit = options.limit === undefined ? 10 : options.limit
        const timeoutSeconds = options.timeoutSeconds === undefined ? 60 : options.timeoutSeconds
        const buffer = {
            _buffer: [],
            _points: 0,
            _startedAt: null,
            get points() {
                return this._points
            },
            add(object, points) {
                const weight = points === undefined ? 1 : points
                if (this._buffer.length > 0 && this._points + weight > limit) this.flush()
                this._buffer.push(object)
                this._points += weight
                if (this._startedAt === null) this._startedAt = Date.now()
                if (this._points > limit || Date.now() - this._startedAt >= timeoutSeconds * 1000) this.flush()
            },
            flush() {
                if (this._buffer.length === 0) return Promise.resolve()
                const batch = this._buffer
                this._buffer = []
                this._points = 0
                this._startedAt = null
                return Promise.resolve(options.onFlush ? options.onFlush(batch) : undefined)
            },
        }
        return buffer
    }
    const builtins = {
        '@posthog/plugin-scaffold': { RetryError },
        '@posthog/plugin-contrib': { createBuffer },
        crypto,
        url: urlModule,
        'node-fetch': fetch,
        zlib,
    }

    // ---- globals ------------------------------------------------------------------------
    const posthog = {
        capture(event, properties) {
            let refused
            try {
                refused = host.capture(String(event), JSON.stringify(properties === undefined ? {} : properties))
            } catch (e) {
                return Promise.reject(e)
            }
            // A refusal by the limits throws at once, so a capture loop stops where it is.
            if (refused) throw new Error(refused)
            return Promise.resolve()
        },
        api: new Proxy({}, {
            get(_, name) {
                return () => Promise.reject(new Error(`posthog.api.${String(name)} is not available in pluginflow`))
            },
        }),
    }
    const globals = {
        console, fetch, RetryError, URL, URLSearchParams, Buffer, TextEncoder, TextDecoder, posthog,
        structuredClone, AbortController, AbortSignal, DOMException, crypto: webCrypto,
        setTimeout: noTimers('setTimeout'), setInterval: noTimers('setInterval'), setImmediate: noTimers('setImmediate'),
        clearTimeout: noTimers('clearTimeout'), clearInterval: noTimers('clearInterval'),
    }
    for (const name of Object.keys(globals)) {
        Object.defineProperty(G, name, { value: globals[name], writable: false, configurable: false, enumerable: false })
    }
    Object.defineProperty(G, 'Intl', { get: () => intl().Intl, configurable: false, enumerable: false })

    // ---- meta -----------------------------------------------------------------------------
    const TIME_UNITS = {
        milliseconds: 1, seconds: 1000, minutes: 60000, hours: 3600000, days: 86400000,
        weeks: 604800000, months: 2592000000, quarters: 7776000000, years: 31536000000,
    }
    function unitMs(unit) {
        const name = String(unit).endsWith('s') ? String(unit) : String(unit) + 's'
        const ms = TIME_UNITS[name]
        if (ms === undefined) throw new Error(`Unknown time unit: ${unit}`)
        return ms
    }
    function jobsProxy() {
        // `runNow` and `runIn` are relative to the worker's clock (it decides when a job is
        // due), `runAt` is a point in time.
        const enqueue = (name, payload, at, relative) => {
            const refused = host.enqueueJob(name, JSON.stringify(payload === undefined ? null : payload), at, relative)
            if (refused) throw new Error(refused)
        }
        return new Proxy({}, {
            get(_, name) {
                if (typeof name !== 'string') return undefined
                return (payload) => ({
                    runNow: promised(() => enqueue(name, payload, 0, true)),
                    runIn: promised((amount, unit) => enqueue(name, payload, Number(amount) * unitMs(unit), true)),
                    runAt: promised((date) => enqueue(name, payload, new Date(date).getTime(), false)),
                })
            },
        })
    }
    function listArg(elementOrArray) {
        if (Array.isArray(elementOrArray)) {
            if (elementOrArray.length > 1000) throw new IllegalOperationError('Too many elements in array for cache.lpush. Maximum: 1000')
            return elementOrArray.map((x) => String(x))
        }
        if (typeof elementOrArray === 'string') return [elementOrArray]
        throw new Error('cache.lpush expects a string value or an array of strings')
    }
    function numberArg(method, name, value) {
        if (typeof value !== 'number') throw new TypeError(`cache.${method} expects ${name} to be a number, got ${typeof value}`)
        return value
    }
    const cache = {
        set: promised((key, value, ttlSeconds, options) => {
            const json = !options || options.jsonSerialize !== false
            host.cacheSet(String(key), json ? String(JSON.stringify(value)) : String(value), Number(ttlSeconds) || 0)
        }),
        get: promised((key, defaultValue, options) => {
            const raw = host.cacheGet(String(key))
            if (raw === undefined) return defaultValue
            if (raw === '') return null
            if (options && options.jsonSerialize === false) return raw
            try {
                return JSON.parse(raw)
            } catch (e) {
                return null
            }
        }),
        incr: promised((key) => host.cacheIncr(String(key))),
        expire: promised((key, ttlSeconds) => host.cacheExpire(String(key), numberArg('expire', 'ttlSeconds', ttlSeconds))),
        lpush: promised((key, elementOrArray) => host.cacheLpush(String(key), listArg(elementOrArray))),
        lrange: promised((key, start, end) => host.cacheLrange(String(key), numberArg('lrange', 'startIndex', start), numberArg('lrange', 'endIndex', end))),
        llen: promised((key) => host.cacheLlen(String(key))),
        lpop: promised((key, count) => host.cacheLpop(String(key), numberArg('lpop', 'count', count))),
        lrem: promised((key, count, element) => host.cacheLrem(String(key), numberArg('lrem', 'count', count), String(element))),
    }
    const storage = {
        get: promised((key, defaultValue) => {
            const raw = host.storageGet(String(key))
            return raw === undefined ? defaultValue : JSON.parse(raw)
        }),
        set: promised((key, value) => {
            if (value === undefined) host.storageDel(String(key))
            else host.storageSet(String(key), JSON.stringify(value))
        }),
        del: promised((key) => host.storageDel(String(key))),
    }
    const geoip = {
        locate: promised((ip) => JSON.parse(host.geoipLocate(String(ip)))),
    }

    // ---- module registry and export discovery -------------------------------------------
    const factories = new Map()
    const loaded = new Map()
    function makeRequire(fromName, requires) {
        return function require(spec) {
            const target = requires[spec]
            if (target === undefined) throw new Error(`Cannot import '${spec}'! This package is not provided by PostHog in plugins.`)
            if (Object.prototype.hasOwnProperty.call(builtins, target)) return builtins[target]
            return loadModule(target)
        }
    }
    // What `import` sees of a module: an ES module's exports are its namespace; anything else
    // (CommonJS, a builtin) is its default export, its own properties when first imported the
    // named ones, in a frozen namespace (as Node imports CommonJS).
    const esModules = new WeakSet()
    const namespaces = new WeakMap()
    function namespaceOf(value) {
        const object = value !== null && (typeof value === 'object' || typeof value === 'function')
        if (object && esModules.has(value)) return value
        if (object && namespaces.has(value)) return namespaces.get(value)
        const ns = Object.create(null)
        if (object) for (const key of Object.keys(value)) if (key !== 'default') ns[key] = value[key]
        ns.default = value
        Object.defineProperty(ns, Symbol.toStringTag, { value: 'Module' })
        Object.freeze(ns)
        if (object) namespaces.set(value, ns)
        return ns
    }
    // `export * from`: every name but `default` the module does not export itself.
    function exportAll(exports) {
        return (ns) => {
            for (const key in ns) {
                if (key === 'default' || key === '__esModule' || Object.prototype.hasOwnProperty.call(exports, key)) continue
                Object.defineProperty(exports, key, { enumerable: true, configurable: true, get: () => ns[key] })
            }
        }
    }
    // A module factory's arguments, in the order of the compiler's FACTORY_PARAMS: CommonJS's
    // five, then what compiled `import`, `import()`, `export`, `export *` and `import.meta` call.
    function factoryArguments(name, def, exports, module) {
        const require = makeRequire(name, def.requires)
        const importModule = (spec) => namespaceOf(require(spec))
        const dynamicImport = (spec) => new Promise((resolve) => resolve(importModule(spec)))
        return [exports, require, module, name, '', importModule, dynamicImport, exports, exportAll(exports), { url: 'file:///' + name }]
    }
    function loadModule(name) {
        if (loaded.has(name)) return loaded.get(name).exports
        const def = factories.get(name)
        const module = { exports: {} }
        if (def.esModule) {
            Object.defineProperty(module.exports, '__esModule', { value: true })
            esModules.add(module.exports)
        }
        loaded.set(name, module)
        // Node's rule for a required module: it is whatever ends up in module.exports (ES-module
        // code exports to `exports`, which is that same object unless it was replaced).
        def.factory.apply(undefined, factoryArguments(name, def, module.exports, module))
        return module.exports
    }

    let meta = null
    let hooks = {}
    let jobFunctions = {}
    const HOOKS = ['setupPlugin', 'teardownPlugin', 'processEvent', 'onEvent', 'exportEvents', 'runEveryMinute', 'runEveryHour', 'runEveryDay']

    function discover(exportsObject, module) {
        const candidates = [exportsObject, exportsObject && exportsObject.default, module.exports]
        const destinations = candidates.filter((d) => d !== null && typeof d === 'object')
        if (!destinations.some((d) => Object.keys(d).length > 0) && module.__pfTopLevel) destinations.push(module.__pfTopLevel)
        const getExported = (key) => {
            for (const d of destinations) if (d[key]) return d[key]
            return undefined
        }
        const found = {}
        for (const name of HOOKS) {
            const fn = getExported(name)
            if (typeof fn === 'function') found[name] = fn
        }
        if (!found.processEvent && typeof getExported('processEventBatch') === 'function') {
            const batch = getExported('processEventBatch')
            found.processEvent = async (event, m) => {
                const result = await batch([event], m)
                return result ? result[0] : undefined
            }
        }
        const jobs = {}
        for (const d of destinations.slice().reverse()) {
            if (d.jobs && typeof d.jobs === 'object') for (const k of Object.keys(d.jobs)) if (typeof d.jobs[k] === 'function') jobs[k] = d.jobs[k]
        }
        return { found, jobs }
    }

    const pf = {
        RetryError,
        TimeoutError,
        define(name, factory, requires, esModule) {
            factories.set(name, { factory, requires, esModule })
        },
        // Runs the entry module with PostHog's prelude (`exports` and `module.exports` are
        // distinct objects) and builds `meta`. Returns the names of the hooks found.
        start(entryName, info) {
            const def = factories.get(entryName)
            const module = { exports: {} }
            const entryExports = {}
            if (def.esModule) {
                Object.defineProperty(entryExports, '__esModule', { value: true })
                esModules.add(entryExports)
            }
            // A module that imports the entry (itself included) gets what the entry exports:
            // its ES exports when it is an ES module, else its module.exports (as in Node).
            loaded.set(entryName, {
                get exports() {
                    return Object.prototype.hasOwnProperty.call(entryExports, '__esModule') ? entryExports : module.exports
                },
            })
            const exportsObject = def.factory.apply(undefined, factoryArguments(entryName, def, entryExports, module))
            const { found, jobs } = discover(exportsObject, module)
            hooks = found
            jobFunctions = jobs
            const attachments = {}
            for (const a of info.attachments) {
                attachments[a.key] = { content_type: a.content_type, file_name: a.file_name, contents: a.contents === null ? null : Buffer._wrap(a.contents) }
            }
            meta = { config: info.config, attachments, global: {}, cache, storage, geoip, jobs: jobsProxy() }
            return Object.keys(hooks).concat(Object.keys(jobs).map((j) => 'job:' + j))
        },
        call(name, a, b) {
            const fn = hooks[name]
            if (name === 'processEvent' || name === 'onEvent' || name === 'exportEvents') return fn(a, meta)
            return fn(meta)
        },
        callJob(name, payloadJson) {
            // Own jobs only: `constructor` or `toString` of the object's prototype are no jobs.
            const fn = Object.prototype.hasOwnProperty.call(jobFunctions, name) ? jobFunctions[name] : undefined
            if (typeof fn !== 'function') throw new Error(`Task "${name}" not found for plugin`)
            const payload = JSON.parse(payloadJson)
            return payload ? fn(payload, meta) : fn(meta)
        },
        // Classifies a thrown value: [kind, name, message, stack].
        describe(error) {
            if (error instanceof TimeoutError || (error && error.name === 'TimeoutError')) return ['timeout', 'TimeoutError', String(error.message || ''), String(error.stack || '')]
            if (error instanceof RetryError || (error && error.name === 'RetryError')) return ['retry', 'RetryError', String(error.message || ''), String(error.stack || '')]
            if (error instanceof Error || (error && typeof error === 'object' && 'message' in error)) {
                return ['failed', String(error.name || 'Error'), String(error.message), String(error.stack || '')]
            }
            return ['failed', typeof error, formatArg(error), '']
        },
        isThenable(value) {
            return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof value.then === 'function'
        },
        // Adopts any thenable into a native promise the host can inspect.
        toPromise(value) {
            return Promise.resolve(value)
        },
    }
    return Object.freeze(pf)
})
