// Adds a greeting and a running per-team event number kept in the plugin cache.
async function processEvent(event, { config, cache }) {
    const number = await cache.incr('events_seen')
    event.properties = event.properties || {}
    event.properties.hello = config.greeting
    event.properties.$event_number = number
    return event
}

module.exports = { processEvent }
