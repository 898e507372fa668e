# The timeline of nodepool chaos --seed 11; written by nodepool chaos --plot.
set terminal pngcairo size 1100,700 noenhanced
set output 'chaos.png'
set multiplot layout 2,1 title 'nodepool chaos, seed 11: red SIGKILL, orange SIGSTOP'
set grid
set lmargin 12
set xrange [0:32.3013]
set arrow from 2.43173, graph 0 to 2.43173, graph 1 nohead lw 1 lc rgb '#ff9f1c' dt 1
set arrow from 4.68223, graph 0 to 4.68223, graph 1 nohead lw 1 lc rgb '#d62728' dt 3
set arrow from 6.28244, graph 0 to 6.28244, graph 1 nohead lw 1 lc rgb '#ff9f1c' dt 3
set arrow from 8.85648, graph 0 to 8.85648, graph 1 nohead lw 1 lc rgb '#d62728' dt 3
set arrow from 11.207, graph 0 to 11.207, graph 1 nohead lw 1 lc rgb '#d62728' dt 3
set arrow from 13.1338, graph 0 to 13.1338, graph 1 nohead lw 1 lc rgb '#d62728' dt 3
set arrow from 15.7189, graph 0 to 15.7189, graph 1 nohead lw 1 lc rgb '#d62728' dt 3
set arrow from 17.7669, graph 0 to 17.7669, graph 1 nohead lw 1 lc rgb '#d62728' dt 1
set arrow from 18.2305, graph 0 to 18.2305, graph 1 nohead lw 1 lc rgb '#d62728' dt 3
set arrow from 19.084, graph 0 to 19.084, graph 1 nohead lw 1 lc rgb '#d62728' dt 3
set arrow from 20.8533, graph 0 to 20.8533, graph 1 nohead lw 1 lc rgb '#ff9f1c' dt 3
set arrow from 21.2172, graph 0 to 21.2172, graph 1 nohead lw 1 lc rgb '#d62728' dt 1
set arrow from 22.5047, graph 0 to 22.5047, graph 1 nohead lw 1 lc rgb '#ff9f1c' dt 3
set arrow from 24.0658, graph 0 to 24.0658, graph 1 nohead lw 1 lc rgb '#ff9f1c' dt 3
set arrow from 25.7598, graph 0 to 25.7598, graph 1 nohead lw 1 lc rgb '#ff9f1c' dt 1
set arrow from 27.3739, graph 0 to 27.3739, graph 1 nohead lw 1 lc rgb '#d62728' dt 1
set arrow from 28.3331, graph 0 to 28.3331, graph 1 nohead lw 1 lc rgb '#d62728' dt 3
set ylabel 'grants per second'
plot 'chaos_grants.dat' using 1:2 with steps lw 2 lc rgb '#1f77b4' title 'sessions started (solid marks: oracle, dotted: miner)'
set xlabel 'seconds since the start'
set ylabel 'sessions queued'
plot 'chaos_queue.dat' using 1:2 with lines lw 2 lc rgb '#2ca02c' title 'queue depth (sampled every 0.5 s while an oracle answers)'
unset multiplot
