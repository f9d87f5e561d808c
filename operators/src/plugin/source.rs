//! Turns a plugin's source files into CommonJS function bodies QuickJS can run.
//!
//! PostHog ran plugin code through Babel (TypeScript preset, ES modules to CommonJS, imports
//! replaced against an allow-list). We do the same in-process with oxc, on the syntax tree:
//! TypeScript is stripped (type-only imports vanish; enums and namespaces become code), then
//! oxc's module-runner transform (Vite's SSR transform) turns `import`/`export` into calls of
//! functions the prelude provides — imports hoisted and their bindings live, exports defined as
//! getters before the body runs, as ES modules behave — and the tree is printed again with a
//! source map. Every module specifier is checked at load time; relative imports are followed
//! and compiled too. [`SourceMaps`] maps positions in stack traces back to the author's files.
//!
//! This module owns no JavaScript runtime; it produces text, a dependency map and source maps.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use oxc::allocator::{Allocator, TakeIn};
use oxc::ast::ast::{Argument, Expression, Program, Statement};
use oxc::ast_visit::{Visit, walk};
use oxc::codegen::{Codegen, CodegenOptions};
use oxc::parser::Parser;
use oxc::semantic::SemanticBuilder;
use oxc::span::SourceType;
use oxc::transformer::{TransformOptions, Transformer};
use oxc::transformer_plugins::ModuleRunnerTransform;

/// Modules a plugin may import by bare name, as PostHog's allow-list did (we provide the subset
/// listed in the plugin API reference that makes sense without Node).
pub const BUILTIN_MODULES: &[&str] = &["@posthog/plugin-scaffold", "@posthog/plugin-contrib", "crypto", "url", "node-fetch", "zlib"];

/// Names of hooks looked up among top-level declarations when a plugin exports nothing.
pub const TOP_LEVEL_NAMES: &[&str] = &[
    "setupPlugin",
    "teardownPlugin",
    "processEvent",
    "processEventBatch",
    "onEvent",
    "exportEvents",
    "runEveryMinute",
    "runEveryHour",
    "runEveryDay",
    "jobs",
];

/// The parameters of every module factory: CommonJS's five, then what oxc's module-runner
/// transform compiles `import`, `import()`, `export`, `export *` and `import.meta` to (the
/// prelude provides each).
pub const FACTORY_PARAMS: &str = "exports, require, module, __filename, __dirname, __vite_ssr_import__, \
                                  __vite_ssr_dynamic_import__, __vite_ssr_exports__, __vite_ssr_exportAll__, __vite_ssr_import_meta__";

/// One compiled module: a JavaScript function expression taking [`FACTORY_PARAMS`].
#[derive(Clone, Debug)]
pub struct CompiledModule {
    /// Path relative to the plugin folder, with `/` separators (used in stack traces).
    pub name: String,
    /// The function expression's source.
    pub factory: String,
    /// Literal specifiers this module requires, mapped to a module name (relative modules) or
    /// to the builtin's canonical name.
    pub requires: BTreeMap<String, String>,
    /// Whether the source used ES module syntax (its `exports.__esModule` is true, as Babel's
    /// output makes it, so importers take `default` from it).
    pub es_module: bool,
}

/// A plugin's compiled modules; the first is the entry.
#[derive(Clone, Debug)]
pub struct CompiledPlugin {
    /// Entry first, then dependencies in discovery order.
    pub modules: Vec<CompiledModule>,
    /// Each module's generated → original positions.
    pub source_maps: Arc<SourceMaps>,
}

/// Generated → original positions of one module, from the printer's source map: tokens
/// `[generated line, generated column, original line, original column]`, 0-based, sorted by
/// generated position; generated columns in bytes (as QuickJS counts them), original ones in
/// UTF-16 units (as JavaScript, V8 and editors do).
#[derive(Debug, Default)]
pub struct PositionMap {
    tokens: Vec<[u32; 4]>,
    /// The module is the author's text unchanged (plain CommonJS): positions are their own,
    /// on its first `identity_lines` lines.
    identity_lines: Option<u32>,
}

/// Lines of a factory before the module's first generated line (the header).
const HEADER_LINES: u32 = 1;

impl PositionMap {
    /// The author's 1-based (line, column) for a 1-based position in the module's factory, as
    /// QuickJS reports it: the nearest mapped token at or before it on that line (or the line's
    /// first token). `None` outside the module's own code (the header, the loader's tail).
    pub fn original(&self, line: u32, column: u32) -> Option<(u32, u32)> {
        if let Some(lines) = self.identity_lines {
            let line = line.checked_sub(HEADER_LINES).filter(|l| (1..=lines).contains(l))?;
            return Some((line, column));
        }
        let line = line.checked_sub(1 + HEADER_LINES)?;
        let column = column.saturating_sub(1);
        let after = self.tokens.partition_point(|t| (t[0], t[1]) <= (line, column));
        let token = match after.checked_sub(1).map(|i| self.tokens[i]) {
            Some(t) if t[0] == line => t,
            _ => *self.tokens.get(after).filter(|t| t[0] == line)?,
        };
        Some((token[2] + 1, token[3] + 1))
    }
}

/// The position maps of a plugin's modules, by module name.
#[derive(Debug, Default)]
pub struct SourceMaps {
    modules: HashMap<String, PositionMap>,
}

impl SourceMaps {
    /// Rewrites every `NAME:LINE:COLUMN` (or `NAME:LINE`) of a compiled module in `text` — a
    /// stack trace, a log line — to the author's line and column in that file. Linear in the
    /// text's length, whatever it holds (it may be a plugin's).
    pub fn rewrite(&self, text: &str) -> String {
        if self.modules.is_empty() {
            return text.to_string();
        }
        let mut out = String::new();
        let mut copied = 0;
        let mut from = 0;
        while let Some(found) = text[from..].find(':') {
            let colon = from + found;
            from = colon + 1;
            // The name: the characters a module name is made of, back to the colon.
            let start =
                text[..colon].rfind(|c: char| !is_name_char(c)).map_or(0, |p| p + text[p..].chars().next().map_or(1, char::len_utf8));
            let Some(map) = self.modules.get(&text[start..colon]) else { continue };
            let (Some(line), after_line) = leading_number(&text[from..]) else { continue };
            let (column, end) = match after_line.strip_prefix(':').map(leading_number) {
                Some((Some(c), rest)) => (Some(c), text.len() - rest.len()),
                _ => (None, text.len() - after_line.len()),
            };
            let Some((l, c)) = map.original(line, column.unwrap_or(1)) else { continue };
            out.push_str(&text[copied..from]);
            match column {
                Some(_) => out.push_str(&format!("{l}:{c}")),
                None => out.push_str(&l.to_string()),
            }
            copied = end;
            from = end;
        }
        if copied == 0 {
            return text.to_string();
        }
        out.push_str(&text[copied..]);
        out
    }
}

/// Whether `c` may be part of a module name in a stack frame (`lib/util-2.js`).
fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '@' | '$')
}

/// The decimal number at the start of `s` (if any) and what follows it.
fn leading_number(s: &str) -> (Option<u32>, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    (s[..end].parse().ok(), &s[end..])
}

/// Why a plugin's source could not be compiled. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// File path as given.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file has a syntax (or TypeScript) error.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// File name.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// The file imports a package pluginflow does not provide.
    #[error("{file}: Cannot import '{module}'! This package is not provided by PostHog in plugins.")]
    ForbiddenImport {
        /// File name.
        file: String,
        /// The module specifier.
        module: String,
    },
    /// A relative import does not resolve to a file inside the plugin folder.
    #[error("{file}: cannot resolve '{module}' (looked for .ts, .js and index files inside the plugin folder)")]
    Unresolved {
        /// File name.
        file: String,
        /// The module specifier.
        module: String,
    },
}

/// Compiles `entry` (a path inside `root`) and every module it imports relatively.
pub fn compile_plugin(root: &Path, entry: &Path) -> Result<CompiledPlugin, SourceError> {
    let mut modules = Vec::new();
    let mut maps = Vec::new();
    let mut seen = BTreeMap::new();
    let mut queue = VecDeque::from([entry.to_path_buf()]);
    seen.insert(entry.to_path_buf(), ());
    while let Some(path) = queue.pop_front() {
        let name = module_name(root, &path);
        let text = std::fs::read_to_string(&path).map_err(|source| SourceError::Read { file: name.clone(), source })?;
        let is_entry = modules.is_empty();
        let compiled = compile_module(&name, &path, &text, is_entry)?;
        let mut requires = BTreeMap::new();
        for spec in compiled.specifiers {
            let target = resolve(root, &path, &name, &spec)?;
            if let Resolved::File(file) = &target
                && seen.insert(file.clone(), ()).is_none()
            {
                queue.push_back(file.clone());
            }
            let resolved_name = match target {
                Resolved::Builtin(b) => b,
                Resolved::File(file) => module_name(root, &file),
            };
            requires.insert(spec, resolved_name);
        }
        maps.push((name.clone(), compiled.positions));
        modules.push(CompiledModule { name, factory: compiled.factory, requires, es_module: compiled.is_esm });
    }
    Ok(CompiledPlugin { modules, source_maps: Arc::new(SourceMaps { modules: maps.into_iter().collect() }) })
}

/// The canonical builtin name for a bare specifier (`node:crypto` → `crypto`), if allowed.
pub fn builtin_name(spec: &str) -> Option<&'static str> {
    let bare = spec.strip_prefix("node:").unwrap_or(spec);
    BUILTIN_MODULES.iter().copied().find(|m| *m == bare)
}

enum Resolved {
    Builtin(String),
    File(PathBuf),
}

fn resolve(root: &Path, from: &Path, from_name: &str, spec: &str) -> Result<Resolved, SourceError> {
    if !(spec.starts_with("./") || spec.starts_with("../")) {
        return builtin_name(spec)
            .map(|b| Resolved::Builtin(b.to_string()))
            .ok_or_else(|| SourceError::ForbiddenImport { file: from_name.to_string(), module: spec.to_string() });
    }
    let base = normalize(&from.parent().unwrap_or(root).join(spec));
    // TypeScript's rule for ES modules: `./x.js` names `x.ts` when there is no `x.js`.
    let typescript_of_js = spec.strip_suffix(".js").map(|_| base.with_extension("ts"));
    let mut candidates = [base.clone(), with_suffix(&base, ".ts"), with_suffix(&base, ".js"), base.join("index.ts"), base.join("index.js")]
        .into_iter()
        .chain(typescript_of_js);
    let root = normalize(root);
    candidates
        .find(|c| c.starts_with(&root) && c.is_file())
        .map(Resolved::File)
        .ok_or_else(|| SourceError::Unresolved { file: from_name.to_string(), module: spec.to_string() })
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Lexically resolves `.` and `..` (the file need not exist).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn module_name(root: &Path, path: &Path) -> String {
    let rel = normalize(path);
    let rel = rel.strip_prefix(normalize(root)).unwrap_or(&rel);
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

struct ModuleOutput {
    factory: String,
    specifiers: Vec<String>,
    is_esm: bool,
    positions: PositionMap,
}

fn compile_module(name: &str, path: &Path, text: &str, is_entry: bool) -> Result<ModuleOutput, SourceError> {
    let typescript = path.extension().is_some_and(|e| e == "ts" || e == "mts" || e == "cts");
    let out = transform(name, text, typescript)?;
    let tail = if is_entry { top_level_tail() } else { String::new() };
    // ES modules are strict, under Node as in Babel's output. The header has a line of its own
    // (`HEADER_LINES`); an ES module's `exports.__esModule` is set by the loader before the
    // factory runs (see `CompiledModule::es_module`).
    let strict = if out.is_esm { "\"use strict\";" } else { "" };
    let factory = format!("(function ({FACTORY_PARAMS}) {{{strict}\n{}\n;{tail}return exports;\n}})", out.code);
    Ok(ModuleOutput { factory, specifiers: out.specifiers, is_esm: out.is_esm, positions: out.positions })
}

/// Records top-level hook declarations on `module.__pfTopLevel` so export discovery can fall
/// back to them, as PostHog did with the VM's global object.
fn top_level_tail() -> String {
    let entries: Vec<String> = TOP_LEVEL_NAMES.iter().map(|n| format!("{n}: typeof {n} === 'undefined' ? undefined : {n}")).collect();
    format!("module.__pfTopLevel = {{ {} }};\n", entries.join(", "))
}

fn syntax_error(name: &str, text: &str, diag: &oxc::diagnostics::OxcDiagnostic) -> SourceError {
    let offset = diag.labels.first().map(|l| l.offset()).unwrap_or(0);
    let (line, column) = line_col(text, offset as usize);
    SourceError::Syntax { file: name.to_string(), line, column, message: diag.message.to_string() }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// One module, transformed: the code, its position map, the literal specifiers it imports or
/// requires (in source order, once each), and whether it used ES module syntax.
struct Transformed {
    code: String,
    positions: PositionMap,
    specifiers: Vec<String>,
    is_esm: bool,
}

/// Parses `text` (TypeScript when `typescript`), strips types, compiles module syntax and prints
/// the result with a source map.
fn transform(name: &str, text: &str, typescript: bool) -> Result<Transformed, SourceError> {
    check_nesting(name, text)?;
    let allocator = Allocator::default();
    let source_type = if typescript { SourceType::ts() } else { SourceType::mjs() }.with_unambiguous(true);
    let parsed = Parser::new(&allocator, text, source_type).parse();
    if let Some(diag) = parsed.diagnostics.errors().next() {
        return Err(syntax_error(name, text, diag));
    }
    let mut program = parsed.program;
    let is_esm = program.body.iter().any(Statement::is_module_declaration);
    if !typescript && !is_esm {
        let mut features = SpecifierCollector::default();
        features.visit_program(&program);
        if !features.module_features {
            // Plain CommonJS: nothing to compile, so the author's text runs as written
            // (comments, `Function.prototype.toString`, positions read by the plugin itself).
            let lines = u32::try_from(text.lines().count()).unwrap_or(u32::MAX);
            let positions = PositionMap { tokens: Vec::new(), identity_lines: Some(lines) };
            return Ok(Transformed { code: text.to_string(), positions, specifiers: unique(features.specs), is_esm });
        }
    }
    let mut scoping = SemanticBuilder::new().build(&program).semantic.into_scoping();
    if typescript {
        let ret = Transformer::new(&allocator, Path::new(name), &TransformOptions::default()).build_with_scoping(scoping, &mut program);
        // Its warnings too: each is a construct it cannot compile faithfully (a namespace
        // exporting a `let`, a nested ambient module…), refused as Babel refused them.
        if let Some(diag) = ret.diagnostics.first() {
            return Err(syntax_error(name, text, diag));
        }
        scoping = ret.scoping;
    }
    ModuleRunnerTransform::new().transform(&allocator, &mut program, scoping);
    synchronous_imports(&allocator, &mut program);
    let mut collector = SpecifierCollector::default();
    collector.visit_program(&program);
    let options = CodegenOptions { source_map_path: Some(PathBuf::from(name)), ..CodegenOptions::default() };
    let printed = Codegen::new().with_options(options).build(&program);
    let mut tokens: Vec<[u32; 4]> = printed
        .map
        .iter()
        .flat_map(|m| m.get_tokens())
        .map(|t| [t.get_dst_line(), t.get_dst_col(), t.get_src_line(), t.get_src_col()])
        .collect();
    tokens.sort_unstable();
    tokens.dedup_by_key(|t| (t[0], t[1]));
    generated_columns_in_bytes(&printed.code, &mut tokens);
    let positions = PositionMap { tokens, identity_lines: None };
    Ok(Transformed { code: printed.code, positions, specifiers: unique(collector.specs), is_esm })
}

/// `specs` in order, each once.
fn unique(specs: Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    for spec in specs {
        if !out.contains(&spec) {
            out.push(spec);
        }
    }
    out
}

/// The source map counts generated columns in UTF-16 units; QuickJS reports bytes. Converts the
/// (sorted) tokens of each line holding non-ASCII text, in one pass over the line.
fn generated_columns_in_bytes(code: &str, tokens: &mut [[u32; 4]]) {
    let lines: Vec<&str> = code.split('\n').collect();
    let mut i = 0;
    while i < tokens.len() {
        let line_no = tokens[i][0];
        let end = i + tokens[i..].iter().take_while(|t| t[0] == line_no).count();
        if let Some(line) = lines.get(line_no as usize).filter(|l| !l.is_ascii()) {
            let (mut utf16, mut chars) = (0u32, line.char_indices().peekable());
            for token in &mut tokens[i..end] {
                while utf16 < token[1] {
                    let Some((_, c)) = chars.next() else { break };
                    utf16 += c.len_utf16() as u32;
                }
                token[1] = chars.peek().map_or(line.len(), |&(at, _)| at) as u32;
            }
        }
        i = end;
    }
}

/// Deepest bracket nesting the compiler takes: its passes recurse once per level, and a
/// hostile source nested tens of thousands deep would overflow the thread's stack. Real code
/// stays far below (strings and comments count too: this is a bound, not a parse).
const MAX_NESTING: usize = 1000;

fn check_nesting(name: &str, text: &str) -> Result<(), SourceError> {
    let mut depth = 0usize;
    for (at, b) in text.bytes().enumerate() {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    let (line, column) = line_col(text, at);
                    let message = format!("nesting deeper than {MAX_NESTING} brackets is refused (it would overflow the compiler's stack)");
                    return Err(SourceError::Syntax { file: name.to_string(), line, column, message });
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The module-runner transform awaits each import (Vite loads modules asynchronously); ours
/// are loaded synchronously, as `require` is, so the hoisted `const __vite_ssr_import_N__ =
/// await __vite_ssr_import__(…)` lose their `await` (the factory is not an async function).
fn synchronous_imports<'a>(allocator: &'a Allocator, program: &mut Program<'a>) {
    for stmt in program.body.iter_mut() {
        let Statement::VariableDeclaration(decl) = stmt else { continue };
        for declarator in decl.declarations.iter_mut() {
            let Some(Expression::AwaitExpression(awaited)) = &mut declarator.init else { continue };
            if is_call_to(&awaited.argument, "__vite_ssr_import__") {
                declarator.init = Some(awaited.argument.take_in(&allocator));
            }
        }
    }
}

fn is_call_to(expr: &Expression<'_>, callee: &str) -> bool {
    matches!(expr, Expression::CallExpression(call) if matches!(&call.callee, Expression::Identifier(id) if id.name == callee))
}

/// Collects the literal specifiers of `require('x')`, `import … from 'x'` and `import('x')`
/// (the latter two as the transform leaves them) anywhere in the module.
#[derive(Default)]
struct SpecifierCollector {
    specs: Vec<String>,
    /// `import(…)` or `import.meta` seen (module syntax a script may hold).
    module_features: bool,
}

impl<'a> Visit<'a> for SpecifierCollector {
    fn visit_call_expression(&mut self, call: &oxc::ast::ast::CallExpression<'a>) {
        if let Expression::Identifier(callee) = &call.callee
            && matches!(callee.name.as_str(), "require" | "__vite_ssr_import__" | "__vite_ssr_dynamic_import__")
            && let Some(Argument::StringLiteral(lit)) = call.arguments.first()
        {
            self.specs.push(lit.value.to_string());
        }
        walk::walk_call_expression(self, call);
    }

    fn visit_import_expression(&mut self, it: &oxc::ast::ast::ImportExpression<'a>) {
        self.module_features = true;
        walk::walk_import_expression(self, it);
    }

    fn visit_import_meta(&mut self, _: &oxc::ast::ast::ImportMeta) {
        self.module_features = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn js(src: &str) -> Transformed {
        transform("index.js", src, false).unwrap()
    }

    /// Whether a compiled module's factory is valid JavaScript (parsed as a script by oxc).
    fn factory_parses(name: &str, src: &str) -> Result<(), String> {
        let factory = compile_module(name, Path::new(name), src, true).map_err(|e| e.to_string())?.factory;
        let allocator = Allocator::default();
        let parsed = Parser::new(&allocator, &factory, SourceType::cjs()).parse();
        match parsed.diagnostics.errors().next() {
            Some(d) => Err(format!("{d}\n{factory}")),
            None => Ok(()),
        }
    }

    #[test]
    fn module_syntax_compiles_to_valid_scripts() {
        for src in [
            "export const jobs = {\n  a: () => 1,\n}\nexport function processEvent(e) {\n  return e\n}\n",
            "export let n = 0\nexport class A {}\nexport default function named() {}\n(() => n)()\n",
            "export const f = (x) => x * 2\nexport default (x) => x\n",
            "import a from './a.js'\nexport { a }\nexport * from './b.js'\n[1, 2].forEach(() => a)\n",
            "import * as ns from 'url'\nimport def, { x as y } from './c.js'\nexport * as all from './d.js'\nexport { z as w } from './e.js'\nexport default class {}\n",
            "const m = import.meta\nexport async function load() { return import('./lazy.js') }\n",
        ] {
            factory_parses("index.js", src).unwrap_or_else(|e| panic!("{src}: {e}"));
        }
        for src in [
            "enum Color { Red, Green = 5 }\nexport namespace N { export const k: number = 1 }\nexport function processEvent(e: any): any { return { ...e, c: Color.Green, k: N.k } }\n",
            "import type { PluginMeta } from '@posthog/plugin-scaffold'\nexport const setupPlugin = (m: PluginMeta): void => {}\n",
        ] {
            factory_parses("index.ts", src).unwrap_or_else(|e| panic!("{src}: {e}"));
        }
    }

    #[test]
    fn specifiers_are_collected_in_source_order_once() {
        let out =
            js("import a from 'crypto'\nconst z = require('zlib')\nimport { b } from 'crypto'\nexport * from './x.js'\nimport('./y.js')\n");
        assert_eq!(out.specifiers, ["crypto", "./x.js", "zlib", "./y.js"].map(String::from), "{}", out.code);
        assert!(out.is_esm);
        assert!(!js("const z = require('zlib')\nmodule.exports = {}").is_esm);
    }

    #[test]
    fn imports_are_loaded_synchronously() {
        let out = js("import { createHash } from 'crypto'\nexport const h = () => createHash('sha1')\n");
        assert!(out.code.contains("__vite_ssr_import__(\"crypto\""), "{}", out.code);
        assert!(!out.code.contains("await"), "{}", out.code);
    }

    #[test]
    fn typescript_types_vanish_but_value_imports_stay() {
        let src = "import { PluginEvent, RetryError } from '@posthog/plugin-scaffold'\ninterface A { x: number }\nexport function processEvent(e: PluginEvent): PluginEvent { if (!e) throw new RetryError('r'); return e as PluginEvent }\n";
        let out = transform("index.ts", src, true).unwrap();
        assert!(!out.code.contains("interface"), "{}", out.code);
        assert!(out.code.contains("RetryError"), "{}", out.code);
        assert!(!out.code.contains(": PluginEvent"), "{}", out.code);
        assert_eq!(out.specifiers, ["@posthog/plugin-scaffold"]);
    }

    #[test]
    fn type_only_import_is_dropped_entirely() {
        let src = "import { PluginMeta } from '@posthog/plugin-scaffold'\nexport function setupPlugin(m: PluginMeta) {}\n";
        let out = transform("index.ts", src, true).unwrap();
        assert!(!out.code.contains("plugin-scaffold") && out.specifiers.is_empty(), "{}", out.code);
    }

    #[test]
    fn typescript_the_compiler_cannot_honour_is_refused() {
        let src = "namespace Totals {\n    export let count = 0\n    export function bump() { count += 1 }\n}\n";
        let err = transform("index.ts", src, true).err().expect("refused").to_string();
        assert!(err.starts_with("index.ts:2:16: Namespaces exporting non-const"), "{err}");
    }

    #[test]
    fn syntax_errors_name_file_line_and_column() {
        let err = transform("index.js", "function f() {\n  return }}\n", false).err().expect("a syntax error");
        let text = err.to_string();
        assert!(text.starts_with("index.js:2:"), "{text}");
    }

    /// The printed code moves lines (types gone, imports hoisted, exports first): the map must
    /// bring each statement back to where the author wrote it.
    #[test]
    fn positions_map_back_to_the_authors_lines_and_columns() {
        let src = "import { RetryError } from '@posthog/plugin-scaffold'\ntype T = { a: number }\n\ninterface U {\n  b: string\n}\nexport function processEvent(e: T): T {\n    if (e) { throw new RetryError('x') }\n    return e\n}\n";
        let out = compile_module("index.ts", Path::new("index.ts"), src, true).unwrap();
        let factory_pos = |needle: &str| {
            let at = out.factory.find(needle).unwrap_or_else(|| panic!("{needle} in {}", out.factory));
            let (line, col) = line_col(&out.factory, at);
            (line as u32, col as u32)
        };
        let source_pos = |needle: &str| {
            let (line, col) = line_col(src, src.find(needle).unwrap());
            (line as u32, col as u32)
        };
        for needle in ["throw new", "return e", "function processEvent"] {
            let (line, col) = factory_pos(needle);
            assert_eq!(out.positions.original(line, col), Some(source_pos(needle)), "{needle} in\n{}", out.factory);
        }
        assert_eq!(out.positions.original(1, 1), None, "the header is no author's code");
    }

    #[test]
    fn plain_commonjs_runs_as_written() {
        let src = "// a comment kept\nfunction processEvent(e) { return e }\nmodule.exports = { processEvent, z: require('zlib') }\n";
        let out = js(src);
        assert_eq!(out.code, src);
        assert_eq!(out.specifiers, ["zlib"]);
        assert_eq!(out.positions.original(3, 17), Some((2, 17)), "factory line 3 is the author's line 2");
        assert_eq!(out.positions.original(1, 1), None, "the header");
        assert_eq!(out.positions.original(5, 1), None, "the loader's tail");
        assert!(js("const m = import.meta\n").code.contains("__vite_ssr_import_meta__"), "import.meta needs compiling");
    }

    /// QuickJS counts columns in bytes, the source map in UTF-16 units: text before a position
    /// on the same line must not move it.
    #[test]
    fn positions_after_non_ascii_text_on_the_same_line() {
        let src = "export function processEvent(e) {\n    throw new Error('日本語のテキスト 😀' + e.properties.missing.x)\n}\n";
        let out = compile_module("index.js", Path::new("index.js"), src, true).unwrap();
        let at = out.factory.find("e.properties").unwrap();
        let line_start = out.factory[..at].rfind('\n').map_or(0, |p| p + 1);
        assert!(!out.factory[line_start..at].is_ascii(), "non-ASCII text before it on the printed line: {}", out.factory);
        let line = out.factory[..at].matches('\n').count() as u32 + 1;
        let byte_column = (at - line_start) as u32 + 1;
        let utf16_column = src.lines().nth(1).unwrap().split("e.properties").next().unwrap().encode_utf16().count() as u32 + 1;
        assert_eq!(out.positions.original(line, byte_column), Some((2, utf16_column)), "{}", out.factory);
    }

    #[test]
    fn nesting_deeper_than_the_compiler_takes_is_refused() {
        let deep = format!("const a = {}0{}\n", "[".repeat(MAX_NESTING + 1), "]".repeat(MAX_NESTING + 1));
        let err = transform("index.js", &deep, false).err().expect("refused").to_string();
        assert!(err.starts_with("index.js:1:") && err.contains("nesting deeper than 1000"), "{err}");
        let fine = format!("export const a = {}0{}\n", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        transform("index.js", &fine, false).expect("the limit itself compiles (on a test thread's 2 MiB stack)");
    }

    #[test]
    fn stack_positions_are_rewritten_only_for_the_modules_own_names() {
        let positions = PositionMap { tokens: vec![[0, 0, 9, 4], [0, 10, 12, 2]], identity_lines: None };
        let maps = SourceMaps { modules: HashMap::from([("index.js".into(), positions)]) };
        let stack = "Error: x\n    at f (index.js:2:12)\n    at g (lib/index.js:2:12)\n    at h (index.js:2)\n    at i (index.js:1:1)";
        assert_eq!(
            maps.rewrite(stack),
            "Error: x\n    at f (index.js:13:3)\n    at g (lib/index.js:2:12)\n    at h (index.js:10)\n    at i (index.js:1:1)"
        );
        // Whatever a plugin puts in a message costs one pass over it.
        let hostile = "index.js:".repeat(20_000) + &"a".repeat(100_000) + ":2:12";
        assert_eq!(maps.rewrite(&hostile), hostile);
        assert_eq!(maps.rewrite("at index.js:2:12"), "at index.js:13:3");
    }

    #[test]
    fn builtins_accept_node_prefix_and_reject_others() {
        assert_eq!(builtin_name("node:crypto"), Some("crypto"));
        assert_eq!(builtin_name("pg"), None);
    }
}
