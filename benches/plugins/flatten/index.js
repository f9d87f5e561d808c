// Benchmark plugin: {a: {b: 1}} in properties also appears as a__b = 1 (objects only, not arrays),
// leaving $set and $set_once alone.
function addFlat(target, prefix, value, separator, depth) {
    for (const [key, inner] of Object.entries(value)) {
        const name = prefix + separator + key
        if (inner !== null && typeof inner === 'object' && !Array.isArray(inner) && depth < 8) {
            addFlat(target, name, inner, separator, depth + 1)
        } else {
            target[name] = inner
        }
    }
}

export function processEvent(event, { config }) {
    const props = event.properties || {}
    const flat = {}
    for (const [key, value] of Object.entries(props)) {
        if (key === '$set' || key === '$set_once') continue
        if (value !== null && typeof value === 'object' && !Array.isArray(value)) addFlat(flat, key, value, config.separator, 1)
    }
    Object.assign(props, flat)
    return event
}
