using ActorBlk.Host.Bench;
using ActorBlk.Host.Commands;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// <c>actorblk bench</c>'s sizes (<c>--bs</c>, <c>--size</c>) read as fio 3.33 reads them with its
/// default <c>kb_base=1024</c> (parse.c <c>str_to_decimal</c>, <c>__get_mult_bytes</c>). Each
/// accepted value is the one fio 3.33 gave for it here (<c>fio --debug=parse --size=...</c>,
/// its <c>out=</c>). The bench refused <c>p</c>, <c>0x</c> and <c>Mi</c>, and took <c>KiB</c> as
/// 1024 where fio takes 1000 (an audit).
/// </summary>
public sealed class BenchSizeSpec
{
    [Theory]
    [InlineData("4096", 4096L)]
    [InlineData("1b", 1L)]
    [InlineData("1B", 1L)]
    [InlineData("1k", 1024L)]
    [InlineData("1K", 1024L)]
    [InlineData("1kB", 1024L)]
    [InlineData("1KB", 1024L)]
    [InlineData("1Ki", 1024L)]                          // not "kib": the k alone decides
    [InlineData("1kib", 1000L)]                         // kb_base=1024 turns the IEC prefixes round
    [InlineData("1KiB", 1000L)]
    [InlineData("1M", 1048576L)]
    [InlineData("1Mi", 1048576L)]
    [InlineData("1g", 1073741824L)]
    [InlineData("1gb", 1073741824L)]
    [InlineData("1GB", 1073741824L)]
    [InlineData("1GiB", 1000000000L)]
    [InlineData("1t", 1099511627776L)]
    [InlineData("1tb", 1099511627776L)]
    [InlineData("1p", 1125899906842624L)]
    [InlineData("1pib", 1000000000000000L)]
    [InlineData("1PiB", 1000000000000000L)]
    [InlineData("8191p", 9222246136947933184L)]
    [InlineData("0x10", 16L)]
    [InlineData("0X1000", 4096L)]
    [InlineData("9223372036854775807", long.MaxValue)]
    public void A_size_is_what_fio_3_33_reads(string text, long bytes) =>
        Assert.Equal(bytes, Sizes.Parse("size", text));

    // fio has no exa unit: it ignores the unknown unit and takes 1e as 1 byte. Refused here, and
    // said why.
    [Theory]
    [InlineData("1e", "1")]
    [InlineData("1E", "1")]
    [InlineData("1eib", "1")]
    [InlineData("1EiB", "1")]
    [InlineData("16384e", "16384")]
    public void Exa_is_refused_as_fio_has_no_such_unit(string text, string fioReads)
    {
        var error = Assert.Throws<UsageException>(() => Sizes.Parse("size", text));
        Assert.Equal($"option --size: '{text}' is not a size: fio has no e (exa) unit, its largest is p (1024^5), and would take '{text}' as {fioReads}, the unit ignored.", error.Message);
    }

    // fio wraps these (8192p is 2^63, which it prints as 9223372036854775808, and refuses only a
    // number past strtoll's range).
    [Theory]
    [InlineData("9223372036854775808")]
    [InlineData("99999999999999999999999")]
    [InlineData("8192p")]
    [InlineData("8388608t")]
    [InlineData("9007199254740992k")]
    [InlineData("0x8000000000000000")]
    public void A_size_past_2_pow_63_is_refused(string text)
    {
        var error = Assert.Throws<UsageException>(() => Sizes.Parse("size", text));
        Assert.Equal($"option --size: '{text}' is more than 2^63 - 1 bytes (9223372036854775807), the largest size.", error.Message);
    }

    // fio takes most of these with the unit ignored or cut (4q is 4, 1.5k is 1, 0x10k is 16, 10% a
    // share of the file); refused here.
    [Theory]
    [InlineData("4q")]
    [InlineData("k")]
    [InlineData("")]
    [InlineData("1.5k")]
    [InlineData("1kk")]
    [InlineData("1kibb")]
    [InlineData("-1k")]
    [InlineData("0x10k")]
    [InlineData("0x")]
    [InlineData("10%")]
    public void Anything_else_is_not_a_size(string text)
    {
        var error = Assert.Throws<UsageException>(() => Sizes.Parse("bs", text));
        Assert.Equal($"option --bs: '{text}' is not a size (bytes, or a number with k, m, g, t or p: 4k, 1m, 2g).", error.Message);
    }

    [Fact]
    public void The_command_line_takes_fios_units()
    {
        var options = BenchCommandLine.Parse("--size=1p", "--bs=0x1000");
        Assert.Equal(1L << 50, options.Size);
        Assert.Equal(4096, options.BlockSize);

        // 1GiB is 10^9 bytes, a multiple of 512: fio's size, taken.
        Assert.Equal(1_000_000_000L, BenchCommandLine.Parse("--size=1GiB").Size);
    }

    [Theory]
    [InlineData("--bs=4KiB", "option --bs: '4KiB' is 4000 bytes, not a multiple of 512: with fio's default kb_base=1024 KiB, MiB, GiB, TiB and PiB are powers of 1000, and k, m, g, t and p (kB, Ki ...) powers of 1024.")]
    [InlineData("--size=1MiB", "option --size: '1MiB' is 1000000 bytes, not a multiple of 512: with fio's default kb_base=1024 KiB, MiB, GiB, TiB and PiB are powers of 1000, and k, m, g, t and p (kB, Ki ...) powers of 1024.")]
    public void A_decimal_unit_that_misses_512_says_why(string arg, string message)
    {
        var error = Assert.Throws<UsageException>(() => BenchCommandLine.Parse(arg));
        Assert.Equal(message, error.Message);
    }
}
