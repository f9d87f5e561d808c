//! Turns a plugin's source files into CommonJS function bodies QuickJS can run.
//!
//! PostHog ran plugin code through Babel (TypeScript preset, ES modules to CommonJS, imports
//! replaced against an allow-list). We do the same in-process with oxc: TypeScript is stripped
//! (type-only imports vanish), `import`/`export` become `require`/`exports.x = ...`, and every
//! module specifier is checked at load time. Relative imports are followed and compiled too.
//!
//! This module owns no JavaScript runtime; it produces text and a dependency map.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Component, Path, PathBuf};

use oxc::allocator::Allocator;
use oxc::ast::ast::{
    Argument, BindingPattern, Declaration, ExportDefaultDeclarationKind, Expression, ImportDeclarationSpecifier, ModuleExportName,
    Statement,
};
use oxc::ast_visit::{Visit, walk};
use oxc::codegen::Codegen;
use oxc::parser::Parser;
use oxc::semantic::SemanticBuilder;
use oxc::span::{GetSpan, SourceType};
use oxc::transformer::{TransformOptions, Transformer};

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

/// One compiled module: a JavaScript function expression taking
/// `(exports, require, module, __filename, __dirname)`.
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
        modules.push(CompiledModule { name, factory: compiled.factory, requires, es_module: compiled.is_esm });
    }
    Ok(CompiledPlugin { modules })
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
    let candidates = [base.clone(), with_suffix(&base, ".ts"), with_suffix(&base, ".js"), base.join("index.ts"), base.join("index.js")];
    let root = normalize(root);
    candidates
        .into_iter()
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
}

fn compile_module(name: &str, path: &Path, text: &str, is_entry: bool) -> Result<ModuleOutput, SourceError> {
    let typescript = path.extension().is_some_and(|e| e == "ts" || e == "mts" || e == "cts");
    let js = if typescript { strip_types(name, text)? } else { text.to_string() };
    let (body, specifiers, is_esm) = to_commonjs(name, &js)?;
    let tail = if is_entry { top_level_tail() } else { String::new() };
    // The header shares the first line with the code so line numbers stay true (columns on
    // line 1 are shifted by the header). An ES module's `exports.__esModule` is set by the
    // loader before the factory runs (see `CompiledModule::es_module`).
    let factory = format!("(function (exports, require, module, __filename, __dirname) {{{body}\n;{tail}return exports;\n}})");
    Ok(ModuleOutput { factory, specifiers, is_esm })
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

fn strip_types(name: &str, text: &str) -> Result<String, SourceError> {
    let allocator = Allocator::default();
    let source_type = SourceType::ts().with_unambiguous(true);
    let parsed = Parser::new(&allocator, text, source_type).parse();
    if let Some(diag) = parsed.diagnostics.errors().next() {
        return Err(syntax_error(name, text, diag));
    }
    let mut program = parsed.program;
    let scoping = SemanticBuilder::new().build(&program).semantic.into_scoping();
    let options = TransformOptions::default();
    let ret = Transformer::new(&allocator, Path::new(name), &options).build_with_scoping(scoping, &mut program);
    if let Some(diag) = ret.diagnostics.errors().next() {
        return Err(syntax_error(name, text, diag));
    }
    Ok(Codegen::new().build(&program).code)
}

/// Text edits that turn ES module syntax into CommonJS. Returns the rewritten code, the
/// literal module specifiers it requires, and whether it was an ES module.
fn to_commonjs(name: &str, js: &str) -> Result<(String, Vec<String>, bool), SourceError> {
    let allocator = Allocator::default();
    let parsed = Parser::new(&allocator, js, SourceType::mjs().with_unambiguous(true)).parse();
    if let Some(diag) = parsed.diagnostics.errors().next() {
        return Err(syntax_error(name, js, diag));
    }
    let mut collector = RequireCollector::default();
    collector.visit_program(&parsed.program);
    let mut edits = Edits::default();
    let mut counter = 0usize;
    let mut is_esm = false;
    for stmt in &parsed.program.body {
        is_esm |= rewrite_statement(js, stmt, &mut edits, &mut counter, &mut collector.specs);
    }
    let out = edits.apply(js);
    let mut specs = collector.specs;
    let mut unique = Vec::new();
    specs.retain(|s| {
        let new = !unique.contains(s);
        if new {
            unique.push(s.clone());
        }
        new
    });
    Ok((out, specs, is_esm))
}

/// Collects `require('literal')` calls anywhere in the module.
#[derive(Default)]
struct RequireCollector {
    specs: Vec<String>,
}

impl<'a> Visit<'a> for RequireCollector {
    fn visit_call_expression(&mut self, call: &oxc::ast::ast::CallExpression<'a>) {
        if let Expression::Identifier(callee) = &call.callee
            && callee.name == "require"
            && call.arguments.len() == 1
            && let Argument::StringLiteral(lit) = &call.arguments[0]
        {
            self.specs.push(lit.value.to_string());
        }
        walk::walk_call_expression(self, call);
    }
}

#[derive(Default)]
struct Edits {
    /// (start, end, replacement), non-overlapping.
    list: Vec<(usize, usize, String)>,
}

impl Edits {
    fn replace(&mut self, start: u32, end: u32, text: impl Into<String>) {
        self.list.push((start as usize, end as usize, text.into()));
    }

    fn insert(&mut self, at: u32, text: impl Into<String>) {
        self.replace(at, at, text);
    }

    fn apply(mut self, src: &str) -> String {
        self.list.sort_by_key(|(s, e, _)| (*s, *e));
        let mut out = String::with_capacity(src.len() + 256);
        let mut pos = 0;
        for (start, end, text) in self.list {
            out.push_str(&src[pos..start]);
            out.push_str(&text);
            pos = end;
        }
        out.push_str(&src[pos..]);
        out
    }
}

fn export_name(name: &ModuleExportName<'_>) -> String {
    match name {
        ModuleExportName::IdentifierName(n) => n.name.to_string(),
        ModuleExportName::IdentifierReference(n) => n.name.to_string(),
        ModuleExportName::StringLiteral(s) => s.value.to_string(),
    }
}

fn js_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

fn binding_names(pattern: &BindingPattern<'_>) -> Vec<String> {
    pattern.get_binding_identifiers().iter().map(|b| b.name.to_string()).collect()
}

fn declaration_names(decl: &Declaration<'_>) -> Vec<String> {
    match decl {
        Declaration::VariableDeclaration(v) => v.declarations.iter().flat_map(|d| binding_names(&d.id)).collect(),
        Declaration::FunctionDeclaration(f) => f.id.iter().map(|i| i.name.to_string()).collect(),
        Declaration::ClassDeclaration(c) => c.id.iter().map(|i| i.name.to_string()).collect(),
        _ => Vec::new(),
    }
}

fn exports_assignments(names: &[(String, String)]) -> String {
    names.iter().map(|(exported, local)| format!("exports[{}] = {local};", js_string(exported))).collect::<Vec<_>>().join(" ")
}

/// Rewrites one top-level statement; returns whether it was module syntax.
fn rewrite_statement(src: &str, stmt: &Statement<'_>, edits: &mut Edits, counter: &mut usize, specs: &mut Vec<String>) -> bool {
    let span = stmt.span();
    match stmt {
        Statement::ImportDeclaration(import) => {
            let source = import.source.value.to_string();
            specs.push(source.clone());
            let req = format!("require({})", js_string(&source));
            let text = match &import.specifiers {
                None => format!("{req};"),
                Some(specifiers) => import_bindings(&req, specifiers, counter),
            };
            edits.replace(span.start, span.end, text);
            true
        }
        Statement::ExportDeclaration(export) => {
            let decl_span = export.declaration.span();
            edits.replace(span.start, decl_span.start, "");
            let names = declaration_names(&export.declaration);
            let pairs: Vec<_> = names.iter().map(|n| (n.clone(), n.clone())).collect();
            // A `;` first: without one (Prettier's style) the assignment would continue the
            // declaration's last line.
            edits.insert(span.end, format!("; {}", exports_assignments(&pairs)));
            true
        }
        Statement::ExportNamedDeclaration(export) => {
            let pairs: Vec<_> = export.specifiers.iter().map(|s| (export_name(&s.exported), export_name(&s.local))).collect();
            edits.replace(span.start, span.end, exports_assignments(&pairs));
            true
        }
        Statement::ExportFromDeclaration(export) => {
            let source = export.source.value.to_string();
            specs.push(source.clone());
            *counter += 1;
            let tmp = format!("__pf_reexport{counter}");
            let pairs: Vec<_> = export
                .specifiers
                .iter()
                .map(|s| (export_name(&s.exported), format!("{tmp}[{}]", js_string(&export_name(&s.local)))))
                .collect();
            let text = format!("{{ const {tmp} = require({}); {} }}", js_string(&source), exports_assignments(&pairs));
            edits.replace(span.start, span.end, text);
            true
        }
        Statement::ExportAllDeclaration(export) => {
            let source = export.source.value.to_string();
            specs.push(source.clone());
            let req = format!("require({})", js_string(&source));
            let text = match &export.exported {
                Some(name) => format!("exports[{}] = {req};", js_string(&export_name(name))),
                None => format!(
                    "{{ const __pf_all = {req}; for (const k of Object.keys(__pf_all)) if (k !== 'default') exports[k] = __pf_all[k]; }}"
                ),
            };
            edits.replace(span.start, span.end, text);
            true
        }
        Statement::ExportDefaultDeclaration(export) => {
            rewrite_export_default(src, span.start, span.end, &export.declaration, edits);
            true
        }
        _ => false,
    }
}

fn import_bindings(req: &str, specifiers: &[ImportDeclarationSpecifier<'_>], counter: &mut usize) -> String {
    *counter += 1;
    let tmp = format!("__pf_import{counter}");
    let mut parts = vec![format!("const {tmp} = {req};")];
    let mut named = Vec::new();
    for spec in specifiers {
        match spec {
            ImportDeclarationSpecifier::ImportDefaultSpecifier(d) => {
                parts.push(format!("const {} = {tmp} && {tmp}.__esModule ? {tmp}.default : {tmp};", d.local.name))
            }
            ImportDeclarationSpecifier::ImportNamespaceSpecifier(n) => parts.push(format!("const {} = {tmp};", n.local.name)),
            ImportDeclarationSpecifier::ImportSpecifier(s) => {
                named.push(format!("{}: {}", js_string(&export_name(&s.imported)), s.local.name))
            }
        }
    }
    if !named.is_empty() {
        parts.push(format!("const {{ {} }} = {tmp};", named.join(", ")));
    }
    parts.join(" ")
}

fn rewrite_export_default(src: &str, start: u32, end: u32, decl: &ExportDefaultDeclarationKind<'_>, edits: &mut Edits) {
    let named = match decl {
        ExportDefaultDeclarationKind::FunctionDeclaration(f) => Some((f.span.start, f.id.as_ref().map(|i| i.name.to_string()))),
        ExportDefaultDeclarationKind::ClassDeclaration(c) => Some((c.span.start, c.id.as_ref().map(|i| i.name.to_string()))),
        _ => None,
    };
    match named {
        Some((decl_start, Some(name))) => {
            edits.replace(start, decl_start, "");
            edits.insert(end, format!("; exports.default = {name};"));
        }
        Some((decl_start, None)) => {
            edits.replace(start, decl_start, "exports.default = ");
            edits.insert(end, ";");
        }
        None => {
            let expr_start = decl.span().start;
            edits.replace(start, expr_start, "exports.default = (");
            let trimmed = src[..end as usize].trim_end();
            let expr_end = if trimmed.ends_with(';') { trimmed.len() - 1 } else { end as usize };
            edits.replace(expr_end as u32, end, ");");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cjs(src: &str) -> String {
        to_commonjs("index.js", src).unwrap().0
    }

    #[test]
    fn plain_script_is_untouched() {
        let src = "function processEvent(e) { return e }\nmodule.exports = { processEvent }";
        assert_eq!(cjs(src), src);
    }

    #[test]
    fn imports_become_requires() {
        let out = cjs("import a, { b as c, d } from 'crypto'\nimport * as ns from 'url'\nimport 'zlib'\n");
        assert!(out.contains("const __pf_import1 = require(\"crypto\");"), "{out}");
        assert!(out.contains("const a = __pf_import1 && __pf_import1.__esModule ? __pf_import1.default : __pf_import1;"), "{out}");
        assert!(out.contains("const { \"b\": c, \"d\": d } = __pf_import1;"), "{out}");
        assert!(out.contains("const ns = __pf_import2;"), "{out}");
        assert!(out.contains("require(\"zlib\");"), "{out}");
        assert!(to_commonjs("index.js", "import 'zlib'").unwrap().2, "an ES module is marked as one");
        assert!(!to_commonjs("index.js", "require('zlib')").unwrap().2);
    }

    /// Whether a compiled module's factory is valid JavaScript (parsed as a script by oxc).
    fn factory_parses(src: &str) -> Result<(), String> {
        let factory = compile_module("index.js", Path::new("index.js"), src, true).map_err(|e| e.to_string())?.factory;
        let allocator = Allocator::default();
        let parsed = Parser::new(&allocator, &factory, SourceType::cjs()).parse();
        match parsed.diagnostics.errors().next() {
            Some(d) => Err(format!("{d}\n{factory}")),
            None => Ok(()),
        }
    }

    #[test]
    fn exports_become_assignments() {
        let out = cjs("export function f() {}\nexport const x = 1, y = 2\nexport { x as z }\nexport default { f }\n");
        assert!(out.contains("function f() {}; exports[\"f\"] = f;"), "{out}");
        assert!(out.contains("const x = 1, y = 2; exports[\"x\"] = x; exports[\"y\"] = y;"), "{out}");
        assert!(out.contains("exports[\"z\"] = x;"), "{out}");
        assert!(out.contains("exports.default = ({ f });"), "{out}");
    }

    #[test]
    fn modules_without_semicolons_compile_to_valid_code() {
        for src in [
            "export const jobs = {\n  a: () => 1,\n}\nexport function processEvent(e) {\n  return e\n}\n",
            "export let n = 0\nexport class A {}\nexport default function named() {}\n(() => n)()\n",
            "export const f = (x) => x * 2\nexport default (x) => x\n",
            "import a from './a.js'\nexport { a }\nexport * from './b.js'\n[1, 2].forEach(() => a)\n",
        ] {
            factory_parses(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        }
    }

    #[test]
    fn line_numbers_survive_for_javascript() {
        let src = "import { RetryError } from '@posthog/plugin-scaffold'\n\nexport function processEvent() {\n  throw new Error('x')\n}\n";
        let out = cjs(src);
        let line_of = |s: &str, needle: &str| s[..s.find(needle).unwrap()].matches('\n').count();
        assert_eq!(line_of(&out, "throw new Error"), line_of(src, "throw new Error"));
    }

    #[test]
    fn typescript_types_vanish_but_value_imports_stay() {
        let src = "import { PluginEvent, RetryError } from '@posthog/plugin-scaffold'\ninterface A { x: number }\nexport function processEvent(e: PluginEvent): PluginEvent { if (!e) throw new RetryError('r'); return e as PluginEvent }\n";
        let js = strip_types("index.ts", src).unwrap();
        assert!(!js.contains("interface"), "{js}");
        assert!(js.contains("RetryError"), "{js}");
        assert!(!js.contains("PluginEvent }") && !js.contains(": PluginEvent"), "{js}");
    }

    #[test]
    fn type_only_import_is_dropped_entirely() {
        let src = "import { PluginMeta } from '@posthog/plugin-scaffold'\nexport function setupPlugin(m: PluginMeta) {}\n";
        let js = strip_types("index.ts", src).unwrap();
        assert!(!js.contains("plugin-scaffold"), "{js}");
    }

    #[test]
    fn syntax_errors_name_file_line_and_column() {
        let err = to_commonjs("index.js", "function f() {\n  return }}\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("index.js:2:"), "{text}");
    }

    #[test]
    fn builtins_accept_node_prefix_and_reject_others() {
        assert_eq!(builtin_name("node:crypto"), Some("crypto"));
        assert_eq!(builtin_name("pg"), None);
    }
}
