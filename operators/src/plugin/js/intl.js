// pluginflow's Intl (ECMA-402 on ICU4X): evaluated in a plugin's context the first time the
// plugin touches `Intl` or a locale-sensitive method (see js/prelude.js), so that plugins which
// never format for a locale do not carry its code in their heap. A function of the host object
// and of the intrinsics it needs, captured by the prelude before any plugin code ran; returns
// `Intl` and the built-ins' locale methods.
(function (host, intrinsics) {
    'use strict'
    // ---- Intl ---------------------------------------------------------------------------
    // ECMA-402 on ICU4X (operators/src/plugin/intl.rs): options are read and checked here, as
    // the specification's abstract operations do, and the host formats with CLDR data.
    const DEFAULT_LOCALE = 'en-US'
    const localeList = (locales) => {
        if (locales === undefined) return []
        const list = typeof locales === 'string' ? [locales] : Array.from(Object(locales))
        return list.map((tag) => {
            if (typeof tag !== 'string' && (typeof tag !== 'object' || tag === null)) throw new TypeError('Language ID should be string or object.')
            const canonical = host.intlLocale(String(tag))
            if (canonical == null) throw new RangeError(`Incorrect locale information provided`)
            return canonical
        })
    }
    const resolveLocale = (locales) => localeList(locales)[0] || DEFAULT_LOCALE
    const optionsObject = (options) => (options === undefined ? {} : options === null ? (() => { throw new TypeError('Cannot convert undefined or null to object') })() : Object(options))
    function option(options, name, kind, allowed, fallback) {
        let value = options[name]
        if (value === undefined) return fallback
        if (kind === 'boolean') return Boolean(value)
        value = String(value)
        if (allowed && !allowed.includes(value)) throw new RangeError(`Value ${value} out of range for Intl options property ${name}`)
        return value
    }
    function numberOption(options, name, min, max, fallback) {
        const value = options[name]
        if (value === undefined) return fallback
        const n = Number(value)
        if (!Number.isFinite(n) || n < min || n > max) throw new RangeError(`${name} value is out of range.`)
        return Math.floor(n)
    }
    const supportedLocalesOf = (locales) => localeList(locales)
    const boundGetter = (proto, name, make) => {
        const cache = new WeakMap()
        Object.defineProperty(proto, name, {
            get() {
                let fn = cache.get(this)
                if (!fn) cache.set(this, (fn = make(this)))
                return fn
            },
            enumerable: false,
            configurable: true,
        })
    }

    const DATE_FIELDS = [
        ['weekday', ['narrow', 'short', 'long']], ['era', ['narrow', 'short', 'long']], ['year', ['2-digit', 'numeric']],
        ['month', ['2-digit', 'numeric', 'narrow', 'short', 'long']], ['day', ['2-digit', 'numeric']],
        ['hour', ['2-digit', 'numeric']], ['minute', ['2-digit', 'numeric']], ['second', ['2-digit', 'numeric']],
    ]
    const STYLES = ['full', 'long', 'medium', 'short']
    // What toLocaleDateString / TimeString / String ask of DateTimeFormat (ToDateTimeOptions).
    let dateDefaults = ['any', 'date']
    class DateTimeFormat {
        #locale
        #options
        constructor(locales, options) {
            const [required, defaults] = dateDefaults
            dateDefaults = ['any', 'date']
            const o = optionsObject(options)
            this.#locale = resolveLocale(locales)
            const r = {}
            const hour12 = option(o, 'hour12', 'boolean')
            const hourCycle = option(o, 'hourCycle', 'string', ['h11', 'h12', 'h23', 'h24'])
            let timeZone = o.timeZone
            if (timeZone === undefined) {
                timeZone = host.intlDefaultZone()
            } else {
                const canonical = host.intlZone(String(timeZone))
                if (canonical == null) throw new RangeError(`Invalid time zone specified: ${timeZone}`)
                timeZone = canonical
            }
            for (const [name, allowed] of DATE_FIELDS) {
                const v = option(o, name, 'string', allowed)
                if (v !== undefined) r[name] = v
            }
            const fsd = numberOption(o, 'fractionalSecondDigits', 1, 3)
            if (fsd !== undefined) r.fractionalSecondDigits = fsd
            const dateStyle = option(o, 'dateStyle', 'string', STYLES)
            const timeStyle = option(o, 'timeStyle', 'string', STYLES)
            const explicit = Object.keys(r)
            if ((dateStyle || timeStyle) && explicit.length) throw new TypeError(`Can't set option ${explicit[0]} when ${dateStyle ? 'dateStyle' : 'timeStyle'} is used`)
            if (required === 'date' && timeStyle) throw new TypeError('Invalid option : timeStyle')
            if (required === 'time' && dateStyle) throw new TypeError('Invalid option : dateStyle')
            if (dateStyle) r.dateStyle = dateStyle
            if (timeStyle) r.timeStyle = timeStyle
            if (!dateStyle && !timeStyle) {
                const hasDate = ['weekday', 'year', 'month', 'day'].some((k) => k in r)
                const hasTime = ['hour', 'minute', 'second', 'fractionalSecondDigits'].some((k) => k in r)
                const needDefaults = required === 'date' ? !hasDate : required === 'time' ? !hasTime : !hasDate && !hasTime
                if (needDefaults && (defaults === 'date' || defaults === 'all')) Object.assign(r, { year: 'numeric', month: 'numeric', day: 'numeric' })
                if (needDefaults && (defaults === 'time' || defaults === 'all')) Object.assign(r, { hour: 'numeric', minute: 'numeric', second: 'numeric' })
            }
            if (hour12 !== undefined) r.hour12 = hour12
            else if (hourCycle !== undefined) r.hourCycle = hourCycle
            r.timeZone = timeZone
            this.#options = r
        }
        static {
            boundGetter(DateTimeFormat.prototype, 'format', (self) => {
                const json = JSON.stringify(self.#options)
                return (date) => {
                    const t = date === undefined ? Date.now() : Number(date)
                    if (!Number.isFinite(t)) throw new RangeError('Invalid time value')
                    return host.intlDate(self.#locale, json, t)
                }
            })
        }
        resolvedOptions() {
            const r = { locale: this.#locale, calendar: 'gregory', numberingSystem: 'latn', timeZone: this.#options.timeZone }
            for (const key of ['hourCycle', 'hour12', 'weekday', 'era', 'year', 'month', 'day', 'hour', 'minute', 'second', 'fractionalSecondDigits', 'dateStyle', 'timeStyle']) {
                if (this.#options[key] !== undefined) r[key] = this.#options[key]
            }
            return r
        }
    }

    const CURRENCY_DIGITS = { BHD: 3, BIF: 0, CLF: 4, CLP: 0, DJF: 0, GNF: 0, IQD: 3, ISK: 0, JOD: 3, JPY: 0, KMF: 0, KRW: 0, KWD: 3, LYD: 3, OMR: 3, PYG: 0, RWF: 0, TND: 3, UGX: 0, UYI: 0, UYW: 4, VND: 0, VUV: 0, XAF: 0, XOF: 0, XPF: 0 }
    class NumberFormat {
        #locale
        #options
        constructor(locales, options) {
            const o = optionsObject(options)
            this.#locale = resolveLocale(locales)
            const style = option(o, 'style', 'string', ['decimal', 'percent', 'currency', 'unit'], 'decimal')
            let currency = option(o, 'currency', 'string')
            if (currency !== undefined && !/^[A-Za-z]{3}$/.test(currency)) throw new RangeError(`Invalid currency code : ${currency}`)
            if (style === 'currency' && currency === undefined) throw new TypeError('Currency code is required with currency style.')
            if (style === 'unit') throw new RangeError('Intl.NumberFormat style "unit" is not supported in pluginflow')
            currency = currency && currency.toUpperCase()
            const currencyDisplay = option(o, 'currencyDisplay', 'string', ['code', 'symbol', 'narrowSymbol', 'name'], 'symbol')
            const notation = option(o, 'notation', 'string', ['standard', 'scientific', 'engineering', 'compact'], 'standard')
            if (notation === 'scientific' || notation === 'engineering') throw new RangeError(`Intl.NumberFormat notation "${notation}" is not supported in pluginflow`)
            const r = { style, notation }
            if (style === 'currency') Object.assign(r, { currency, currencyDisplay })
            if (notation === 'compact') r.compactDisplay = option(o, 'compactDisplay', 'string', ['short', 'long'], 'short')
            r.minimumIntegerDigits = numberOption(o, 'minimumIntegerDigits', 1, 21, 1)
            const cDigits = style === 'currency' ? (CURRENCY_DIGITS[currency] ?? 2) : 0
            const minFracDefault = style === 'currency' && notation !== 'compact' ? cDigits : 0
            const maxFracDefault = style === 'currency' && notation !== 'compact' ? Math.max(minFracDefault, cDigits) : style === 'percent' ? 0 : notation === 'compact' ? 0 : 3
            const hasSig = o.minimumSignificantDigits !== undefined || o.maximumSignificantDigits !== undefined
            const hasFrac = o.minimumFractionDigits !== undefined || o.maximumFractionDigits !== undefined
            if (hasSig) {
                r.minimumSignificantDigits = numberOption(o, 'minimumSignificantDigits', 1, 21, 1)
                r.maximumSignificantDigits = numberOption(o, 'maximumSignificantDigits', r.minimumSignificantDigits, 21, 21)
            } else if (hasFrac || notation !== 'compact') {
                let minFrac = numberOption(o, 'minimumFractionDigits', 0, 100)
                let maxFrac = numberOption(o, 'maximumFractionDigits', 0, 100)
                if (minFrac === undefined) minFrac = Math.min(minFracDefault, maxFrac === undefined ? minFracDefault : maxFrac)
                else if (maxFrac === undefined) maxFrac = Math.max(maxFracDefault, minFrac)
                else if (minFrac > maxFrac) throw new RangeError('maximumFractionDigits value is out of range.')
                if (maxFrac === undefined) maxFrac = Math.max(maxFracDefault, minFrac)
                r.minimumFractionDigits = minFrac
                r.maximumFractionDigits = maxFrac
            } else {
                r.compactRounding = true
            }
            const grouping = o.useGrouping
            r.useGrouping = grouping === undefined ? (notation === 'compact' ? 'min2' : 'auto') : grouping === true || grouping === 'true' ? 'always' : grouping === false || grouping === 'false' ? 'false' : option(o, 'useGrouping', 'string', ['min2', 'auto', 'always'])
            this.#options = r
        }
        static {
            boundGetter(NumberFormat.prototype, 'format', (self) => {
                const json = JSON.stringify(self.#options)
                const suffix = self.#options.style === 'percent' ? '%' : ''
                return (value) => {
                    const x = Number(value)
                    if (Number.isNaN(x)) return 'NaN' + suffix
                    if (!Number.isFinite(x)) return (x < 0 ? '-∞' : '∞') + suffix
                    return host.intlNumber(self.#locale, json, x)
                }
            })
        }
        resolvedOptions() {
            const r = { locale: this.#locale, numberingSystem: 'latn' }
            for (const [key, value] of Object.entries(this.#options)) if (key !== 'compactRounding') r[key] = value
            r.useGrouping = r.useGrouping === 'false' ? false : r.useGrouping
            r.signDisplay = 'auto'
            r.roundingMode = 'halfExpand'
            return r
        }
    }

    class Collator {
        #locale
        #options
        constructor(locales, options) {
            const o = optionsObject(options)
            this.#locale = resolveLocale(locales)
            const usage = option(o, 'usage', 'string', ['sort', 'search'], 'sort')
            const sensitivity = option(o, 'sensitivity', 'string', ['base', 'accent', 'case', 'variant'], 'variant')
            const ignorePunctuation = option(o, 'ignorePunctuation', 'boolean', null, false)
            const numeric = option(o, 'numeric', 'boolean', null, false)
            const caseFirst = option(o, 'caseFirst', 'string', ['upper', 'lower', 'false'], 'false')
            this.#options = { usage, sensitivity, ignorePunctuation, collation: 'default', numeric, caseFirst }
        }
        static {
            boundGetter(Collator.prototype, 'compare', (self) => {
                const json = JSON.stringify(self.#options)
                return (a, b) => host.intlCompare(self.#locale, json, collationText(String(a)), collationText(String(b)))
            })
        }
        resolvedOptions() {
            return Object.assign({ locale: this.#locale }, this.#options)
        }
    }

    class PluralRules {
        #locale
        #type
        constructor(locales, options) {
            const o = optionsObject(options)
            this.#locale = resolveLocale(locales)
            this.#type = option(o, 'type', 'string', ['cardinal', 'ordinal'], 'cardinal')
        }
        select(n) {
            const x = Number(n)
            if (!Number.isFinite(x)) return 'other'
            return host.intlPlural(this.#locale, this.#type === 'ordinal', x)
        }
        resolvedOptions() {
            return { locale: this.#locale, type: this.#type, minimumIntegerDigits: 1, minimumFractionDigits: 0, maximumFractionDigits: 3 }
        }
    }

    const RELATIVE_UNITS = ['second', 'minute', 'hour', 'day', 'week', 'month', 'quarter', 'year']
    class RelativeTimeFormat {
        #locale
        #style
        #numeric
        constructor(locales, options) {
            const o = optionsObject(options)
            this.#locale = resolveLocale(locales)
            this.#style = option(o, 'style', 'string', ['long', 'short', 'narrow'], 'long')
            this.#numeric = option(o, 'numeric', 'string', ['always', 'auto'], 'always')
        }
        format(value, unit) {
            const x = Number(value)
            if (!Number.isFinite(x)) throw new RangeError('Invalid number value')
            const u = String(unit)
            const singular = u.endsWith('s') ? u.slice(0, -1) : u
            if (!RELATIVE_UNITS.includes(singular)) throw new RangeError(`Invalid unit argument for format() '${u}'`)
            return host.intlRelative(this.#locale, this.#style, this.#numeric === 'auto', singular, x)
        }
        resolvedOptions() {
            return { locale: this.#locale, style: this.#style, numeric: this.#numeric, numberingSystem: 'latn' }
        }
    }

    const Intl = {}
    for (const [name, value] of Object.entries({ DateTimeFormat, NumberFormat, Collator, PluralRules, RelativeTimeFormat })) {
        Object.defineProperty(value, 'supportedLocalesOf', { value: supportedLocalesOf, writable: true, configurable: true, enumerable: false })
        Object.defineProperty(value.prototype, Symbol.toStringTag, { value: `Intl.${name}`, configurable: true })
        // Callable without `new`, as ECMA-402's constructors are (Intl.DateTimeFormat().format(...)).
        const ctor = new Proxy(value, { apply: (target, _, args) => new target(...args) })
        Object.defineProperty(Intl, name, { value: ctor, writable: true, configurable: true, enumerable: false })
    }
    Object.defineProperty(Intl, 'getCanonicalLocales', { value: (locales) => localeList(locales), writable: true, configurable: true, enumerable: false })
    Object.defineProperty(Intl, Symbol.toStringTag, { value: 'Intl', configurable: true })

    const thisTime = intrinsics.getTime
    const dateMethod = (required, defaults) =>
        function (locales, options) {
            const t = thisTime.call(this)
            if (Number.isNaN(t)) return 'Invalid Date'
            dateDefaults = [required, defaults]
            return new DateTimeFormat(locales, options).format(t)
        }
    const stringOf = (value, method) => {
        if (value === undefined || value === null) throw new TypeError(`String.prototype.${method} called on null or undefined`)
        return String(value)
    }
    // Lone surrogates (text cut inside an emoji) cannot cross to the host as they are. ICU,
    // under Node, weighs one as the code point it is: an implicit weight, as for a code point
    // with no character, in code point order. The private-use characters 0x800 above them
    // (U+E000–U+E7FF) are weighed the same way and in the same order, so a lone surrogate is
    // compared as one of those: the order agrees with Node's except against private-use text.
    const LONE_SURROGATE = /[\ud800-\udfff]/gu
    const collationText = (text) =>
        text.isWellFormed() ? text : text.replace(LONE_SURROGATE, (c) => String.fromCharCode(c.charCodeAt(0) + 0x800))
    // ICU keeps lone surrogates through a case change: the text between them is changed.
    const changeCase = (locale, text, upper) => {
        if (text.isWellFormed()) return host.intlCase(locale, text, upper)
        const pieces = text.split(/([\ud800-\udfff])/u)
        for (let i = 0; i < pieces.length; i += 2) pieces[i] = host.intlCase(locale, pieces[i], upper)
        return pieces.join('')
    }
    const thisNumber = intrinsics.numberValue
    const thisBigInt = intrinsics.bigintValue
    return {
        Intl,
        toLocaleString: dateMethod('any', 'all'),
        toLocaleDateString: dateMethod('date', 'date'),
        toLocaleTimeString: dateMethod('time', 'time'),
        numberToLocaleString(locales, options) {
            return new NumberFormat(locales, options).format(thisNumber.call(this))
        },
        bigintToLocaleString(locales, options) {
            return new NumberFormat(locales, options).format(thisBigInt.call(this))
        },
        localeCompare(that, locales, options) {
            return new Collator(locales, options).compare(stringOf(this, 'localeCompare'), that)
        },
        toLocaleUpperCase(locales) {
            return changeCase(resolveLocale(locales), stringOf(this, 'toLocaleUpperCase'), true)
        },
        toLocaleLowerCase(locales) {
            return changeCase(resolveLocale(locales), stringOf(this, 'toLocaleLowerCase'), false)
        },
    }
})
