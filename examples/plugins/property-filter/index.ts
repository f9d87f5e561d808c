import { PluginEvent, PluginMeta } from '@posthog/plugin-scaffold'

type Config = { properties: string; dropEvents: string; mode: 'remove' | 'mask' }
type Meta = PluginMeta & { config: Config; global: { properties: string[]; drop: Set<string> } }

const list = (text: string): string[] =>
    text.split(',').map((s) => s.trim()).filter((s) => s.length > 0)

export function setupPlugin({ config, global }: Meta): void {
    global.properties = list(config.properties)
    global.drop = new Set(list(config.dropEvents))
}

export function processEvent(event: PluginEvent, { config, global }: Meta): PluginEvent | null {
    if (global.drop.has(event.event)) {
        return null
    }
    const props = event.properties ?? {}
    for (const key of global.properties) {
        if (key in props) {
            if (config.mode === 'mask') props[key] = '***'
            else delete props[key]
        }
    }
    return event
}
