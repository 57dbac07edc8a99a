using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;

namespace ActorBlk.Samples.MirrorJournal;

/// <summary>
/// The second node in chaos mode: <c>actorblk serve</c> run as a child process that joins this
/// node, its output appended to a log file. It can be killed with SIGKILL (no shutdown of any kind,
/// as a crash or a pulled plug) and started again at the same address.
/// </summary>
public sealed partial class LegNode : IAsyncDisposable
{
    private const int SigTerm = 15;
    private const int SolSocket = 1;
    private const int SoReusePort = 15;

    private readonly Process _process;
    private readonly Task _pump;
    private bool _disposed;

    private LegNode(Process process, Task pump, string address)
    {
        _process = process;
        _pump = pump;
        Address = address;
    }

    /// <summary>The node's address, <c>127.0.0.1:port</c>.</summary>
    public string Address { get; }

    /// <summary>The process id.</summary>
    public int Pid => _process.Id;

    /// <summary>
    /// Runs <c>dotnet ACTORBLK serve --config CONFIG --port PORT --seed SEED --nbd-listen 127.0.0.1:0</c>
    /// and waits until it says where its devices are addressable (it has joined and serves them).
    /// </summary>
    /// <exception cref="InvalidOperationException">It exited first, or did not get there within <paramref name="within"/>; the log says why.</exception>
    public static async Task<LegNode> StartAsync(string actorblk, string config, int port, string seed, string log, TimeSpan within)
    {
        var info = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = Path.GetDirectoryName(config)!,
        };
        foreach (var a in new[] { actorblk, "serve", "--config", config, "--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--seed", seed, "--nbd-listen", "127.0.0.1:0" })
        {
            info.ArgumentList.Add(a);
        }

        var process = Process.Start(info) ?? throw new InvalidOperationException("dotnet did not start.");
        var address = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var writer = new StreamWriter(log, append: true) { AutoFlush = true };
        var pump = Task.WhenAll(Pump(process.StandardOutput, writer, address), Pump(process.StandardError, writer, address))
            .ContinueWith(_ => writer.Dispose(), TaskScheduler.Default);
        try
        {
            var exited = process.WaitForExitAsync();
            var first = await Task.WhenAny(address.Task, exited).WaitAsync(within);
            if (first != address.Task)
            {
                await pump;
                var code = process.ExitCode;
                process.Dispose();
                throw new InvalidOperationException($"the second node exited with code {code} before it served its devices; see {log}.");
            }

            return new LegNode(process, pump, await address.Task);
        }
        catch (TimeoutException)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
            await pump;
            process.Dispose();
            throw new InvalidOperationException($"the second node did not serve its devices within {within.TotalSeconds} s; see {log}.");
        }
    }

    /// <summary>
    /// Keeps the node's port from every other program until disposed, so that the node can be
    /// started there again after a kill: a socket bound to the port with <c>SO_REUSEADDR</c> and
    /// <c>SO_REUSEPORT</c>, never listening. While it is bound the kernel gives the port to no bind
    /// to port 0 and no <c>connect()</c> (in the seconds between a kill and the restart, any
    /// program's could take it, and the restart failed with the address in use), and the node binds
    /// it beside the socket: Akka's transport listens with <c>SO_REUSEPORT</c> on Linux, which the
    /// kernel lets sockets of one user share. It can be bound while the node still runs. Null when
    /// the port cannot be kept (an address that is not an IP address, or a refusal): the restart
    /// then takes its chance as before.
    /// </summary>
    public IDisposable? KeepPort()
    {
        var colon = Address.LastIndexOf(':');
        if (colon < 0 || !IPAddress.TryParse(Address[..colon].Trim('[', ']'), out var ip)
            || !int.TryParse(Address[(colon + 1)..], System.Globalization.CultureInfo.InvariantCulture, out var port))
        {
            return null;
        }

        var socket = new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true); // SO_REUSEADDR and SO_REUSEPORT on Linux
            if (OperatingSystem.IsLinux())
            {
                socket.SetRawSocketOption(SolSocket, SoReusePort, BitConverter.GetBytes(1));
            }

            socket.Bind(new IPEndPoint(ip, port));
            return socket;
        }
        catch (SocketException)
        {
            socket.Dispose();
            return null;
        }
    }

    /// <summary>SIGKILL: the node dies at once, without leaving the cluster or closing its devices.</summary>
    public async Task KillAsync()
    {
        if (_disposed)
        {
            return;
        }

        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
        }

        await _process.WaitForExitAsync();
        await _pump;
    }

    /// <summary>SIGTERM, as Ctrl-C: the node drains its devices, leaves the cluster and exits; returns its exit code (null once disposed).</summary>
    public async Task<int?> StopAsync(TimeSpan within)
    {
        if (_disposed)
        {
            return null;
        }

        if (!_process.HasExited)
        {
            _ = Kill(_process.Id, SigTerm);
        }

        try
        {
            await _process.WaitForExitAsync().WaitAsync(within);
        }
        catch (TimeoutException)
        {
            await KillAsync();
        }

        await _pump;
        return _process.ExitCode;
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        await KillAsync();
        if (!_disposed)
        {
            _disposed = true;
            _process.Dispose();
        }
    }

    [GeneratedRegex(@"Devices are addressable at akka(\.ssl)?\.tcp://actorblk@(?<node>[^/]+)/user/actorblk")]
    private static partial Regex AddressLine();

    private static async Task Pump(StreamReader reader, StreamWriter log, TaskCompletionSource<string> address)
    {
        while (await reader.ReadLineAsync() is { } line)
        {
            lock (log)
            {
                log.WriteLine(line);
            }

            if (AddressLine().Match(line) is { Success: true } m)
            {
                address.TrySetResult(m.Groups["node"].Value);
            }
        }
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);
}
