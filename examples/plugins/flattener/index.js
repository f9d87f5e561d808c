// Nested objects in properties become flat keys; person updates stay nested.
const NESTED = new Set(['$set', '$set_once', '$unset', '$group_set'])

function flatten(target, prefix, value, separator) {
    for (const [key, inner] of Object.entries(value)) {
        const name = prefix + separator + key
        if (inner !== null && typeof inner === 'object' && !Array.isArray(inner)) {
            flatten(target, name, inner, separator)
        } else {
            target[name] = inner
        }
    }
}

export function processEvent(event, { config }) {
    if (!event.properties) return event
    const flat = {}
    for (const [key, value] of Object.entries(event.properties)) {
        if (value !== null && typeof value === 'object' && !Array.isArray(value) && !NESTED.has(key)) {
            flatten(flat, key, value, config.separator)
        } else {
            flat[key] = value
        }
    }
    event.properties = flat
    return event
}
