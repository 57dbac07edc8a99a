using ActorBlk.Host.Commands;
using ActorBlk.Host.Tests.Support;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// A configuration file whose braces or brackets do not pair up is refused naming the line: Akka's
/// parser accepts a last object that is never closed, and the mistake used to surface as a later,
/// unrelated complaint (an outside audit).
/// </summary>
public sealed class NodeConfigBracketsSpec : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("actorblk-brackets-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string name, string text)
    {
        var path = Path.Combine(_dir, name);
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void The_repository_hocon_conf_passes()
    {
        var config = NodeConfig.Load(RepositoryFiles.Hocon(), port: 0);
        Assert.False(string.IsNullOrEmpty(config.GetString("actorblk.nbd.listen")));
    }

    [Theory]
    [InlineData(4056)] // the file's own port: its seeds were kept before (an outside audit)
    [InlineData(4057)]
    [InlineData(0)]
    public void Port_without_seed_makes_a_node_that_joins_itself_whatever_the_file_names(int port)
    {
        var path = Write("seeded.conf", "akka.remote.dot-netty.tcp.port = 4056\nakka.cluster.seed-nodes = [\"akka.tcp://actorblk@127.0.0.1:4053\"]\n");

        var config = NodeConfig.Load(path, port);

        Assert.Equal(port, config.GetInt("akka.remote.dot-netty.tcp.port"));
        Assert.Empty(config.GetStringList("akka.cluster.seed-nodes"));
        Assert.Equal(["akka.tcp://actorblk@127.0.0.1:4054"], NodeConfig.Load(path, port, seeds: ["127.0.0.1:4054"]).GetStringList("akka.cluster.seed-nodes"));
        Assert.Equal(["akka.tcp://actorblk@127.0.0.1:4053"], NodeConfig.Load(path, port: null).GetStringList("akka.cluster.seed-nodes"));
    }

    // A bad-input audit: a directory was said not to exist.
    [Fact]
    public void A_directory_given_as_the_configuration_or_an_include_is_named_a_directory()
    {
        var refused = Assert.Throws<UsageException>(() => NodeConfig.Load(_dir, port: 0));
        Assert.Equal($"configuration file '{_dir}' is a directory.", refused.Message);

        Directory.CreateDirectory(Path.Combine(_dir, "sub"));
        var path = Write("includes.conf", "include \"sub\"\nactorblk { a = 1 }\n");
        var include = Assert.Throws<UsageException>(() => NodeConfig.Load(path, port: 0));
        Assert.Contains($"include \"sub\": {Path.Combine(_dir, "sub")} is a directory.", include.Message, StringComparison.Ordinal);
    }

    // An outside CLI fuzzing audit: 30,000 nested '[' overflowed Akka's recursive parser, and a
    // substitution cycle overflowed the first reader of the configuration (SIGABRT, "Stack overflow.").
    [Fact]
    public void Brackets_nested_deeper_than_the_limit_are_refused_before_the_parser_sees_them()
    {
        var deep = HoconBrackets.MaxDepth + 1;
        var path = Write("deep.conf", "zz = " + new string('[', deep) + new string(']', deep) + "\n");

        var refused = Assert.Throws<UsageException>(() => NodeConfig.Load(path, port: 0));

        Assert.Contains($"nest at most {HoconBrackets.MaxDepth} deep", refused.Message, StringComparison.Ordinal);
        var limit = Write("limit.conf", "zz " + string.Concat(Enumerable.Repeat("{ a ", HoconBrackets.MaxDepth)) + "= 1 " + new string('}', HoconBrackets.MaxDepth) + "\n");
        Assert.Equal(1, NodeConfig.Load(limit, port: 0).GetInt("zz" + string.Concat(Enumerable.Repeat(".a", HoconBrackets.MaxDepth))));
    }

    [Theory]
    [InlineData("zz = ${zz}\n", "${zz}")]
    [InlineData("aa = ${bb}\nbb = ${aa}\n", "${")]
    [InlineData("aa { bb = ${aa} }\n", "${aa}")]
    public void A_cycle_of_substitutions_is_refused_naming_it(string text, string named)
    {
        var path = Write("cycle.conf", text);

        var refused = Assert.Throws<UsageException>(() => NodeConfig.Load(path, port: 0));

        Assert.Contains("not valid HOCON", refused.Message, StringComparison.Ordinal);
        Assert.Contains("cycle of substitutions", refused.Message, StringComparison.Ordinal);
        Assert.Contains(named, refused.Message, StringComparison.Ordinal);
    }

    // HOCON's ${?NAME} (Akka JVM configurations use it for environment variables): Akka.NET's parser
    // read it as a substitution of the whole file, refused as "the substitution ${} refers to
    // itself (a cycle of substitutions)", which told the reader nothing. It is named, with its
    // line; an unresolved ${NAME} says that names are keys, not environment variables.
    [Fact]
    public void An_optional_substitution_is_refused_naming_its_line_and_why()
    {
        var path = Write("optional.conf", "aa = 1\nbb {\n  port = ${?ACTORBLK_PORT}\n}\ncc = \"${?in a string}\"\n");

        var refused = Assert.Throws<UsageException>(() => NodeConfig.Load(path, port: 0));

        Assert.Contains("line 3: '${?' is HOCON's optional substitution, which Akka.NET's parser does not read", refused.Message, StringComparison.Ordinal);
        var home = Assert.Throws<UsageException>(() => NodeConfig.Load(Write("env.conf", "aa = ${HOME}\n"), port: 0));
        Assert.Contains("Unresolved substitution: HOME (a substitution names a key of the configuration: Akka.NET's HOCON parser reads no environment variables)", home.Message, StringComparison.Ordinal);
        Assert.Equal("${?in a string}", NodeConfig.Load(Write("quoted.conf", "cc = \"${?in a string}\"\n"), port: 0).GetString("cc"));
    }

    // HOCON's append: Akka.NET's parser drops `+=` without a word, so `actorblk.devices += { ... }`
    // in an override file created no device. It is refused naming its line.
    [Fact]
    public void An_append_is_refused_naming_its_line()
    {
        var path = Write("append.conf", "actorblk.devices = []\nactorblk.devices += { name = d1, driver = \"null\" }\n");

        var refused = Assert.Throws<UsageException>(() => NodeConfig.Load(path, port: 0));

        Assert.Contains("line 2: '+=' is HOCON's append, which Akka.NET's parser ignores", refused.Message, StringComparison.Ordinal);
        Assert.Equal("a+=b", NodeConfig.Load(Write("quoted-append.conf", "cc = \"a+=b\"\n"), port: 0).GetString("cc"));
    }

    [Fact]
    public void Substitutions_without_a_cycle_still_resolve()
    {
        var path = Write("subst.conf", "aa = 1\nbb = ${aa}\ncc { dd = 2 }\nee = ${cc}\nff = [${aa}, ${bb}]\n");

        var config = NodeConfig.Load(path, port: 0);

        Assert.Equal(1, config.GetInt("bb"));
        Assert.Equal(2, config.GetInt("ee.dd"));
        Assert.Equal([1, 1], config.GetIntList("ff"));
    }

    [Fact]
    public void A_brace_never_closed_is_refused_naming_its_line()
    {
        var path = Write("open.conf", "actorblk {\n  nbd {\n    listen = off\n  }\n");

        var refused = Assert.Throws<UsageException>(() => NodeConfig.Load(path, port: 0));

        Assert.Contains("not valid HOCON", refused.Message, StringComparison.Ordinal);
        Assert.Contains("'{' opened at line 1 is never closed", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_bracket_closed_by_the_wrong_kind_is_refused_naming_both_lines()
    {
        var path = Write("mismatch.conf", "actorblk {\n  devices = [\n    { name = a, size = 1m }\n  }\n]\n");

        var refused = Assert.Throws<UsageException>(() => NodeConfig.Load(path, port: 0));

        Assert.Contains("line 4: '}' closes the '[' opened at line 2", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Brackets_in_strings_and_comments_do_not_count()
    {
        const string Triple = "\"\"\"";
        var path = Write("quoted.conf",
            "# a comment with { and [\n" +
            "// another ] }\n" +
            "actorblk {\n" +
            "  a = \"{ [ \\\" }\"\n" +
            "  b = " + Triple + "multi\nline { ] " + Triple + "\n" +
            "  c = 1 # trailing }\n" +
            "}\n");

        var config = NodeConfig.Load(path, port: 0);

        Assert.Equal("{ [ \" }", config.GetString("actorblk.a"));
        Assert.Equal(1, config.GetInt("actorblk.c"));
    }

    [Fact]
    public void A_quoted_string_may_span_lines_and_one_never_closed_is_refused()
    {
        var path = Write("multiline.conf", "actorblk {\n  d = \"x\ny { z\"\n}\n");
        Assert.Equal("x\ny { z", NodeConfig.Load(path, port: 0).GetString("actorblk.d"));

        var open = Write("openstring.conf", "actorblk {\n  d = \"x }\n}\n");
        var refused = Assert.Throws<UsageException>(() => NodeConfig.Load(open, port: 0));
        Assert.Contains("string opened at line 2 is never closed", refused.Message, StringComparison.Ordinal);

        // A triple-quoted one took the rest of the file, and the node started without the keys after it.
        var triple = Write("opentriple.conf", "actorblk {\n  d = \"\"\"x\n}\nactorblk.nbd.listen = off\n");
        var tripleRefused = Assert.Throws<UsageException>(() => NodeConfig.Load(triple, port: 0));
        Assert.Contains("triple-quoted string opened at line 2 is never closed", tripleRefused.Message, StringComparison.Ordinal);
        var closed = Write("triple.conf", "actorblk {\n  d = \"\"\"x\n}\"\"\"\n}\n");
        Assert.Equal("x\n}", NodeConfig.Load(closed, port: 0).GetString("actorblk.d"));
    }

    [Fact]
    public void An_unquoted_url_that_hides_a_bracket_is_named()
    {
        // HOCON (and Akka's parser) read "//" as a comment outside quotes: the '}' after it is gone.
        var path = Write("url.conf", "actorblk { devices = [ { name = n, driver = nbd, uri = nbd://127.0.0.1:10809/x } ] }\n");

        var refused = Assert.Throws<UsageException>(() => NodeConfig.Load(path, port: 0));

        Assert.Contains("line 1 holds an unquoted URL", refused.Message, StringComparison.Ordinal);
        Assert.Contains("quote it", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_file_the_parser_refuses_is_still_a_usage_error()
    {
        // Brackets pair up; the parser's own refusal (an unresolved substitution) is reported unwrapped.
        var path = Write("bad.conf", "actorblk {\n  a = ${no.such.path}\n}\n");

        var refused = Assert.Throws<UsageException>(() => NodeConfig.Load(path, port: 0));

        Assert.Contains("not valid HOCON", refused.Message, StringComparison.Ordinal);
    }

    // An outside CLI fuzzing audit: Akka.NET's parser reads only include "FILE"; HOCON's file(),
    // url(), classpath() and required() forms were taken for a key, which swallowed the keys after
    // it (include file("/etc/passwd") then actorblk.nbd.listen = off left the export on), in silence.
    [Theory]
    [InlineData("include file(\"/etc/passwd\")\nactorblk.nbd.listen = off\n", "line 1: include file(\"/etc/passwd\"): ")]
    [InlineData("actorblk {\n  nbd.listen = off\n  include url(\"http://127.0.0.1/x.conf\")\n}\n", "line 3: include url(\"http://127.0.0.1/x.conf\"): ")]
    [InlineData("include classpath(\"reference.conf\")\n", "line 1: include classpath(\"reference.conf\"): ")]
    [InlineData("zz = 1, include required(file(\"base.conf\"))\n", "line 1: include required(file(\"base.conf\")): ")]
    [InlineData("aa = [1]\ninclude\trequired(\"base.conf\") # must exist\n", "line 2: include\trequired(\"base.conf\") # must exist: ")]
    [InlineData("include base.conf\n", "line 1: include base.conf: ")]
    [InlineData("# settings\ninclude\n  actorblk.nbd.listen = off\n", "line 2: include: ")]
    public void An_include_the_parser_does_not_read_is_refused_naming_its_line(string text, string named)
    {
        Write("base.conf", "actorblk.nbd.listen = off\n");
        var path = Write("includes.conf", text);

        var refused = Assert.Throws<UsageException>(() => NodeConfig.Load(path, port: 0));

        Assert.Contains($"{path} is not valid HOCON: {named}only include \"FILE\" is read", refused.Message, StringComparison.Ordinal);
        Assert.Contains("does not know url(), file(), classpath() or required()", refused.Message, StringComparison.Ordinal);

        // In an included file, the include is named too.
        var outer = Write("outer.conf", "include \"includes.conf\"\n");
        var nested = Assert.Throws<UsageException>(() => NodeConfig.Load(outer, port: 0));
        Assert.Contains($"include \"includes.conf\" ({path}): {named}", nested.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Include_FILE_a_key_named_include_and_include_inside_a_value_or_a_list_still_parse()
    {
        Write("base.conf", "actorblk.nbd.listen = off\n");
        var path = Write("keys.conf",
            "include \"base.conf\"\n" +
            "include\n  \"base.conf\"\n" +
            "aa { include = 1 }\n" +
            "bb { include { cc = 2 } }\n" +
            "dd { \"include\" = 3, includes = 4 }\n" +
            "ee {\n  include.ff = 5\n}\n" +
            "gg = include file(\"x\")\n" +
            "hh = [ include file(\"y\") ]\n" +
            "ii =\n  include file(\"z\")\n");

        var config = NodeConfig.Load(path, port: 0);

        Assert.Equal("off", config.GetString("actorblk.nbd.listen"));
        Assert.Equal(1, config.GetInt("aa.include"));
        Assert.Equal(2, config.GetInt("bb.include.cc"));
        Assert.Equal(3, config.GetInt("dd.include"));
        Assert.Equal(4, config.GetInt("dd.includes"));
        Assert.Equal(5, config.GetInt("ee.include.ff"));
        Assert.StartsWith("include file(", config.GetString("gg"), StringComparison.Ordinal);
        Assert.StartsWith("include file(", Assert.Single(config.GetStringList("hh")), StringComparison.Ordinal);
        Assert.StartsWith("include file(", config.GetString("ii"), StringComparison.Ordinal);
    }

    // The same audit: NUL bytes passed (Akka's parser took them into a key or a value); no HOCON
    // text holds one.
    [Theory]
    [InlineData("actorblk.nbd.listen = off\0\n", "line 1, column 26: a NUL character (U+0000)")]
    [InlineData("# a comment\nactorblk {\n  a = \"x\0y\"\n}\n", "line 3, column 9: a NUL character (U+0000)")]
    [InlineData("\0", "line 1, column 1: a NUL character (U+0000)")]
    public void A_nul_character_is_refused_naming_its_line_and_column(string text, string named)
    {
        var path = Write("nul.conf", text);

        var refused = Assert.Throws<UsageException>(() => NodeConfig.Load(path, port: 0));

        Assert.Contains($"{path} is not valid HOCON: {named}; a HOCON file is text and never holds one.", refused.Message, StringComparison.Ordinal);
        var outer = Write("outer.conf", "include \"nul.conf\"\n");
        Assert.Contains($"include \"nul.conf\" ({path}): {named}", Assert.Throws<UsageException>(() => NodeConfig.Load(outer, port: 0)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void An_included_file_with_a_brace_never_closed_is_refused_naming_the_include()
    {
        Write("inner.conf", "actorblk {\n  nbd.listen = off\n");
        var path = Write("outer.conf", "include \"inner.conf\"\nactorblk.topology.source = simulated\n");

        var refused = Assert.Throws<UsageException>(() => NodeConfig.Load(path, port: 0));

        Assert.Contains("inner.conf", refused.Message, StringComparison.Ordinal);
        Assert.Contains("never closed", refused.Message, StringComparison.Ordinal);
    }
}
