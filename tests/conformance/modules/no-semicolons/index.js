// Prettier's default style: no semicolons, so nothing ends a statement but a line break
import * as self from './index.js'
import { greet } from './lib.js'

export const jobs = {
  refresh: async () => null,
}
export let calls = 0
export class Counter {
  constructor() {
    this.n = 0
  }
}
export function processEvent(event) {
  calls += 1
  event.properties.exports = Object.keys(self).sort()
  event.properties.greeting = greet(event.event)
  event.properties.calls = calls
  event.properties.counter = new Counter().n
  return event
}
export const onEvent = async () => {}
