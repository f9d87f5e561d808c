// Benchmark plugin: a property from config, and a per-team counter in the cache.
export async function processEvent(event, { config, cache }) {
    event.properties = event.properties || {}
    event.properties.greeting = config.greeting
    event.properties.greeted = await cache.incr('greeted')
    return event
}
