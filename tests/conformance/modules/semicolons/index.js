import * as self from './index.js';
import shout, { PREFIX as prefix } from './lib.js';

export async function setupPlugin() {}
export const processEvent = (event) => {
  event.properties.exports = Object.keys(self).sort();
  event.properties.shout = shout(event.event);
  event.properties.prefix = prefix;
  return event;
};
export default class Ignored {}
export { prefix as renamed };
