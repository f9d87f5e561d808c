import type { PluginEvent } from '@posthog/plugin-scaffold'
import Geometry, { area, Shape, Units } from './shapes.js'
import * as self from './index.js'

enum Level {
    Low = 1,
    High = Low * 10,
    Label = 'level',
}

// (A namespace exporting a `let` is refused at load, as Babel refused it for PostHog: the
// compiled code would not see its updates.)
namespace Totals {
    export const seen: number[] = []
    export function bump(by: number): number {
        seen.push(by)
        return seen.reduce((a, b) => a + b, 0)
    }
}

class Counter {
    constructor(
        private readonly start: number,
        public step = 2,
    ) {}
    next(n: number): number {
        return this.start + n * this.step
    }
}

export const labels: string[] = [Level[Level.Low], Units[Units.Foot], Level.Label]

export function processEvent(event: PluginEvent): PluginEvent {
    const n = Number(event.properties?.n ?? 0)
    const shape: Shape = n > 0 ? { kind: 'square', side: n } : { kind: 'circle', radius: -n }
    return {
        ...event,
        properties: {
            ...event.properties,
            area: area(shape),
            described: Geometry.describe(shape),
            unit: Units.Metre,
            units: Units.Name,
            level: n > 1 ? Level.High : Level.Low,
            labels,
            total: Totals.bump(n),
            count: Totals.seen.length,
            counter: new Counter(n).next(3),
            exports: Object.keys(self).sort(),
        },
    }
}
