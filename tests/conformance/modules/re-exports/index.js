import * as self from './index.js'
import * as math from './math.js'
import twice, { half } from './math.js'
export { double, triple as thrice } from './math.js'
export * from './extra.js'
export * as mathNs from './math.js'

export function processEvent(event) {
  const n = event.properties.n
  event.properties.exports = Object.keys(self).sort()
  event.properties.results = [math.double(n), twice(n), half(n), self.thrice(n), self.extraValue, Object.keys(self.mathNs).sort()]
  return event
}
