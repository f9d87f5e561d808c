import { PluginEvent, PluginMeta } from '@posthog/plugin-scaffold'

export async function processEvent(event: PluginEvent, { geoip }: PluginMeta): Promise<PluginEvent> {
    const ip = event.ip || event.properties?.$ip
    if (!ip) {
        return event
    }
    let location: any
    try {
        location = await geoip.locate(ip)
    } catch (error) {
        // Unknown or private address, or no database configured: leave the event as it is.
        return event
    }
    const props = (event.properties = event.properties || {})
    const geo: Record<string, unknown> = {
        $geoip_city_name: location.city?.names?.en,
        $geoip_country_code: location.country?.isoCode,
        $geoip_country_name: location.country?.names?.en,
        $geoip_continent_code: location.continent?.code,
        $geoip_subdivision_1_code: location.subdivisions?.[0]?.isoCode,
        $geoip_latitude: location.location?.latitude,
        $geoip_longitude: location.location?.longitude,
        $geoip_time_zone: location.location?.timeZone,
        $geoip_postal_code: location.postal?.code,
    }
    for (const [key, value] of Object.entries(geo)) {
        if (value !== undefined) props[key] = value
    }
    return event
}
