// The conformance plugin: tests/tests/conformance.rs writes the corpus's expressions into
// CASES below and runs this file twice, as a plugin under `pluginflow try` and as a CommonJS
// module under Node (tests/conformance/node-run.js). Both evaluate every case and describe each
// result as JSON the same way, so the two outputs can be compared case by case.
'use strict'

// A JSON description of any value: types JSON cannot carry (undefined, NaN, -0, BigInt, Date,
// Map, typed arrays, errors...) become tagged objects; object keys keep their order as pairs.
function describe(value, depth) {
    if (depth > 8) return { $: 'too deep' }
    switch (typeof value) {
        case 'undefined':
            return { $: 'undefined' }
        case 'number':
            return Number.isFinite(value) && !Object.is(value, -0) ? value : { $: 'number', v: Object.is(value, -0) ? '-0' : String(value) }
        case 'bigint':
            return { $: 'bigint', v: value.toString() }
        case 'symbol':
            return { $: 'symbol', v: value.description }
        case 'function':
            return { $: 'function' }
        case 'string':
        case 'boolean':
            return value
    }
    if (value === null) return null
    const tag = Object.prototype.toString.call(value).slice(8, -1)
    if (Array.isArray(value)) {
        const out = []
        for (let i = 0; i < value.length; i++) out.push(i in value ? describe(value[i], depth + 1) : { $: 'hole' })
        return out
    }
    if (value instanceof Error) return { $: 'error', name: value.name, code: value.code }
    if (value instanceof Date) return { $: 'Date', v: isNaN(value.getTime()) ? 'Invalid Date' : value.toISOString() }
    if (value instanceof RegExp) return { $: 'RegExp', v: String(value) }
    if (value instanceof Map) return { $: 'Map', v: describe(Array.from(value), depth + 1) }
    if (value instanceof Set) return { $: 'Set', v: describe(Array.from(value), depth + 1) }
    if (value instanceof ArrayBuffer) return { $: 'ArrayBuffer', v: Array.from(new Uint8Array(value)) }
    if (ArrayBuffer.isView(value) && !(value instanceof DataView)) return { $: Buffer.isBuffer(value) ? 'Buffer' : tag, v: Array.from(value) }
    if (value instanceof Promise) return { $: 'Promise' }
    if (tag === 'URL' || tag === 'URLSearchParams') return { $: tag, v: String(value) }
    return { $: tag === 'Object' ? 'object' : tag, v: Object.keys(value).map((k) => [k, describe(value[k], depth + 1)]) }
}

const cases = [
    /* CASES */
]

function processEvent(event) {
    const results = cases.map((run) => {
        try {
            return describe(run(), 0)
        } catch (e) {
            return { $: 'threw', name: e && e.name, code: e && e.code }
        }
    })
    event.properties = { results }
    return event
}

module.exports = { processEvent }
