// Runs the conformance plugin under Node: `node node-run.js PLUGIN_DIR < event.json` prints
// the event processEvent returns, as `pluginflow try` does.
'use strict'
const path = require('path')
const plugin = require(path.resolve(process.argv[2], 'index.js'))
const event = JSON.parse(require('fs').readFileSync(0, 'utf8'))
Promise.resolve(plugin.processEvent(event, { config: {}, global: {} })).then((out) => console.log(JSON.stringify(out)))
