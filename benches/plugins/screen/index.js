// Benchmark plugin: drops events from internal hosts or from bots (a falsy result), tags the rest.
const BOT = /bot|crawler|spider|headless/i

export function processEvent(event, { config }) {
    const props = event.properties || {}
    const hosts = config.internal_hosts.split(',').map((h) => h.trim())
    if (hosts.includes(props.$host)) return null
    if (BOT.test(props.$raw_user_agent || '')) return null
    props.screened = true
    return event
}
