// Types, an enum, a namespace and a default export that is a namespace.
export interface Square {
    kind: 'square'
    side: number
}
export interface Circle {
    kind: 'circle'
    radius: number
}
export type Shape = Square | Circle

export enum Units {
    Metre = 1,
    Foot,
    Name = 'units',
}

export function area(s: Shape): number {
    return s.kind === 'square' ? s.side * s.side : Math.PI * s.radius ** 2
}

export namespace Geometry {
    export const sides: Record<Shape['kind'], number> = { square: 4, circle: 0 }
    export function describe(s: Shape): string {
        return `${s.kind}/${sides[s.kind]}:${area(s)}`
    }
}

export default Geometry
